"""PASCAL VOC segmentation: ROOT/JPEGImages/<id>.jpg, ROOT/SegmentationClass/<id>.png (palette
PNG of class ids, 255 = boundary, not scored), ROOT/ImageSets/Segmentation/{train,val}.txt.
Probe-train is `train`, probe-test is `val` (1,464 and 1,449 images in VOC 2012)."""

from pathlib import Path

import numpy as np

from tipslab.jobs.eval.evalsets.base import EvalDataError, EvalSet, EvalSplit, need_dir, read_label_map

CLASSES = 21  # background + 20 object classes


def read_split(root: Path, split: str, size: int) -> EvalSplit:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise EvalDataError(f"{listing}: no such file (the VOC {split} list)")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    images, labels = need_dir(root / "JPEGImages", "VOC images"), need_dir(root / "SegmentationClass", "VOC labels")
    paths, seg = [], []
    for i in ids:
        image = images / f"{i}.jpg"
        if not image.is_file():
            raise EvalDataError(f"{image}: no such file (listed in {listing})")
        paths.append(str(image))
        seg.append(read_label_map(labels / f"{i}.png", size, str(labels / f"{i}.png")))
    if not ids:
        raise EvalDataError(f"{listing}: lists no images")
    seg = np.stack(seg)
    bad = (seg >= CLASSES) & (seg != 255)
    if bad.any():
        raise EvalDataError(
            f"{labels}: image {ids[int(bad.any(axis=(1, 2)).argmax())]!r} has class ids "
            f"outside 0..{CLASSES - 1} and 255"
        )
    return EvalSplit(ids, paths, segmentation=seg)


def read(root: str, size: int, name: str = "pascal_voc") -> EvalSet:
    root = Path(root)
    return EvalSet(name, read_split(root, "train", size), read_split(root, "val", size), seg_classes=CLASSES)
