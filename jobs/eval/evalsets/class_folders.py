"""ImageNet-style class folders: ROOT/train/<class>/*.jpg (probe-train) and ROOT/val/<class>/*.jpg
(probe-test). Class names, for zero-shot prompts: an optional ROOT/classnames.txt (one "folder name"
per line); else, for ImageNet-1k's 1000 WordNet-id folders, the published readable names (CLIP's,
as open_clip ships them, in the sorted-wnid order that defines ImageNet's class indices); else the
folder names with underscores as spaces."""

import logging
import re
from pathlib import Path

import numpy as np

from tipslab.jobs.eval.evalsets.base import EvalDataError, EvalSet, EvalSplit, list_images, need_dir

log = logging.getLogger(__name__)
WNID = re.compile(r"n\d{8}")


def class_names(root: Path, folders: list[str]) -> list[str]:
    names = {f: f.replace("_", " ") for f in folders}
    table = root / "classnames.txt"
    wnids = all(WNID.fullmatch(f) for f in folders)
    if wnids and len(folders) == 1000 and not table.is_file():
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)  # folders are sorted: index i is ImageNet class i
    if wnids and not table.is_file():
        log.warning(
            "%s: %d WordNet-id class folders, not ImageNet-1k's 1000, and no classnames.txt: zero-shot "
            "prompts will name the ids themselves",
            root,
            len(folders),
        )
    if table.is_file():
        for i, line in enumerate(table.read_text().splitlines()):
            if line.strip():
                folder, _, name = line.strip().partition(" ")
                if not name:
                    raise EvalDataError(f"{table}: line {i + 1} is not 'folder name'")
                names[folder] = name.strip()
    return [names[f] for f in folders]


def read_split(root: Path, split: str, folders: list[str]) -> EvalSplit:
    base = need_dir(root / split, f"class folders of the {split} split")
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    unknown = set(found) - set(folders)
    if unknown:
        raise EvalDataError(f"{base}: classes {sorted(unknown)[:3]} are not in {root / 'train'}")
    keys, images, labels = [], [], []
    for label, folder in enumerate(folders):
        if not (base / folder).is_dir():
            continue
        for path in list_images(base / folder):
            keys.append(f"{split}/{folder}/{path.name}")
            images.append(str(path))
            labels.append(label)
    if not keys:
        raise EvalDataError(f"{base}: no images in its class folders")
    return EvalSplit(keys, images, labels=np.array(labels, dtype=np.int64))


def read(root: str, size: int, name: str = "imagenet") -> EvalSet:
    root = Path(root)
    folders = sorted(
        p.name for p in need_dir(root / "train", "class folders of the train split").iterdir() if p.is_dir()
    )
    return EvalSet(
        name,
        read_split(root, "train", folders),
        read_split(root, "val", folders),
        class_names=class_names(root, folders),
    )
