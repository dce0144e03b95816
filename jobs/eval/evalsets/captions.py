"""COCO and Flickr30k captions in Karpathy's split files (dataset_coco.json, dataset_flickr30k.json).

ROOT holds one `dataset_*.json`; its images are at ROOT/<filepath>/<filename> (COCO's val2014/...)
or, for Flickr30k, at ROOT/<filename>, ROOT/flickr30k-images/<filename> or ROOT/images/<filename>.
Retrieval is zero-shot, so only the `test` split is read (COCO 5k, Flickr30k 1k images).
"""

import json
from pathlib import Path

import numpy as np

from tipslab.jobs.eval.evalsets.base import EvalDataError, EvalSet, EvalSplit, need_dir

IMAGE_FOLDERS = ("", "flickr30k-images", "images")


def split_file(root: Path) -> Path:
    if root.is_file():
        return root
    found = sorted(need_dir(root, "Karpathy split JSON and images").glob("dataset_*.json"))
    if len(found) != 1:
        raise EvalDataError(f"{root}: expected one dataset_*.json (Karpathy split file), found {len(found)}")
    return found[0]


def image_path(folder: Path, entry: dict, where: str) -> Path:
    candidates = [folder / entry.get("filepath", "") / entry["filename"]] + [
        folder / sub / entry["filename"] for sub in IMAGE_FOLDERS
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise EvalDataError(f"{where}: image {entry['filename']!r} not found under {folder}")


def read(root: str, size: int, name: str = "coco", split: str = "test") -> EvalSet:
    path = split_file(Path(root))
    try:
        entries = json.loads(path.read_text())["images"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvalDataError(f"{path}: not a Karpathy split file ({err})") from None
    keys, images, captions, owner = [], [], [], []
    for i, entry in enumerate(entries):
        where = f"{path}: images[{i}]"
        try:
            if entry["split"] != split:
                continue
            texts = [s["raw"] for s in entry["sentences"]]
            filename = entry["filename"]
        except (KeyError, TypeError) as err:
            raise EvalDataError(f"{where}: lacks {err} (needs split, filename, sentences[].raw)") from None
        if not texts:
            raise EvalDataError(f"{where}: no sentences")
        images.append(str(image_path(path.parent, entry, where)))
        keys.append(str(entry.get("cocoid", entry.get("imgid", filename))))
        captions += texts
        owner += [len(keys) - 1] * len(texts)
    if not keys:
        raise EvalDataError(f"{path}: no images in split {split!r}")
    test = EvalSplit(keys, images, captions=captions, caption_image=np.array(owner, dtype=np.int64))
    return EvalSet(name, None, test)
