"""NYUv2 depth as RGB + 16-bit depth PNG pairs: ROOT/{train,test}/rgb/<name>.(jpg|png) and
ROOT/{train,test}/depth/<name>.png in millimetres, 0 = no measurement. (No Eigen crop: every
measured pixel is scored.)"""
from pathlib import Path

import numpy as np

from .base import EvalDataError, EvalSet, EvalSplit, list_images, need_dir, read_depth_mm


def read_split(root: Path, split: str, size: int) -> EvalSplit:
    rgb = list_images(need_dir(root / split / "rgb", f"NYUv2 {split} RGB images"))
    depth_dir = need_dir(root / split / "depth", f"NYUv2 {split} depth PNGs")
    if not rgb:
        raise EvalDataError(f"{root / split / 'rgb'}: no images")
    depth = []
    for path in rgb:
        d = depth_dir / f"{path.stem}.png"
        if not d.is_file():
            raise EvalDataError(f"{d}: no such file (the depth of {path.name})")
        depth.append(read_depth_mm(d, size, str(d)))
    return EvalSplit([f"{split}/{p.stem}" for p in rgb], [str(p) for p in rgb], depth=np.stack(depth))


def read(root: str, size: int, name: str = "nyuv2") -> EvalSet:
    root = Path(root)
    # DINOv2 caps NYUv2 at 10 m, about the range of its Kinect sensor
    return EvalSet(name, read_split(root, "train", size), read_split(root, "test", size), depth_max=10.0)
