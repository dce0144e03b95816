"""ImageNet-style class folders: ROOT/train/<class>/*.jpg (probe-train) and ROOT/val/<class>/*.jpg
(probe-test). Class names are the folder names with underscores as spaces; an optional
ROOT/classnames.txt (one "folder name" per line) gives readable names instead (ImageNet's wnids)."""

from pathlib import Path

import numpy as np

from tipslab.jobs.eval.evalsets.base import EvalDataError, EvalSet, EvalSplit, list_images, need_dir


def class_names(root: Path, folders: list[str]) -> list[str]:
    names = {f: f.replace("_", " ") for f in folders}
    table = root / "classnames.txt"
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
