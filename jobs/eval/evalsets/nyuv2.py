"""NYUv2 depth as RGB + 16-bit depth PNG pairs: ROOT/{train,test}/rgb/<name>.(jpg|png) and
ROOT/{train,test}/depth/<name>.png in millimetres, 0 = no measurement, full 480 x 640 frames
(squashed to square label maps). The standard depth protocol (dinov2_linear) scores inside Eigen's
crop of the frame; the cheap one (scenes_bins) every measured pixel."""

from pathlib import Path

import numpy as np

from tipslab.jobs.eval.evalsets.base import EvalSet, EvalSplit, need_dir, paired_pngs, read_depth_mm


def read_split(root: Path, split: str, size: int) -> EvalSplit:
    pairs = paired_pngs(
        need_dir(root / split / "rgb", f"NYUv2 {split} RGB images"),
        need_dir(root / split / "depth", f"NYUv2 {split} depth PNGs"),
        "depth",
    )
    rgb = [path for path, _ in pairs]
    depth = [read_depth_mm(d, size, str(d)) for _, d in pairs]
    return EvalSplit([f"{split}/{p.stem}" for p in rgb], [str(p) for p in rgb], depth=np.stack(depth))


def read(root: str, size: int, name: str = "nyuv2") -> EvalSet:
    root = Path(root)
    # DINOv2 caps NYUv2 at 10 m, about the range of its Kinect sensor
    return EvalSet(
        name, read_split(root, "train", size), read_split(root, "test", size), depth_max=10.0, depth_eval_crop="eigen"
    )
