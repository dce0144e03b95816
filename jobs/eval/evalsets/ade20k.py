"""ADE20k (SceneParsing, ADEChallengeData2016): ROOT/images/{training,validation}/*.jpg and
ROOT/annotations/{training,validation}/*.png with ids 1..150 and 0 = "other", which is not scored."""

from pathlib import Path

import numpy as np

from tipslab.jobs.eval.evalsets.base import (
    IGNORE,
    EvalDataError,
    EvalSet,
    EvalSplit,
    need_dir,
    paired_pngs,
    read_label_map,
)

CLASSES = 150


def read_split(root: Path, split: str, size: int) -> EvalSplit:
    pairs = paired_pngs(
        need_dir(root / "images" / split, f"ADE20k {split} images"),
        need_dir(root / "annotations" / split, f"ADE20k {split} annotations"),
        "annotation",
    )
    images = [path for path, _ in pairs]
    seg = []
    for _, label in pairs:
        ids = read_label_map(label, size, str(label))
        if ids.max() > CLASSES:
            raise EvalDataError(f"{label}: class id {ids.max()} is outside 0..{CLASSES}")
        seg.append(np.where(ids == 0, IGNORE, ids - 1).astype(np.uint8))  # 1..150 -> 0..149
    return EvalSplit([p.stem for p in images], [str(p) for p in images], segmentation=np.stack(seg))


def read(root: str, size: int, name: str = "ade20k") -> EvalSet:
    root = Path(root)
    return EvalSet(name, read_split(root, "training", size), read_split(root, "validation", size), seg_classes=CLASSES)
