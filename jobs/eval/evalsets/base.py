"""What every dataset reader returns: two splits of images with the labels the probes need.

Dense labels are held at one square resolution (the model's input size, nearest-resized), which is
where the dense probes are scored. Images stay encoded (bytes) or on disk (paths): the feature
actors decode them, so a reader holds little more than the labels.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tipslab.models.errors import DataError

IGNORE = 255  # segmentation pixels that are never scored (VOC's boundaries, ADE20k's "other")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Depth evaluation crops (top, bottom, left, right) as fractions of the frame, so that they scale to
# any label map: Eigen et al.'s NYUv2 crop, rows 45:471 and columns 41:601 of the 480 x 640 frame
# (the crop of DINOv2's and AdaBins' NYUv2 evaluations).
DEPTH_CROPS = {"eigen": (45 / 480, 471 / 480, 41 / 640, 601 / 640)}


class EvalDataError(DataError):
    """A dataset folder, file or row is missing or malformed; the message names it."""


@dataclass
class EvalSplit:
    keys: list[str]
    images: list  # encoded bytes, or file paths (str)
    labels: np.ndarray | None = None  # [N] int64 image classes
    segmentation: np.ndarray | None = None  # [N, S, S] uint8 class ids, IGNORE = not scored
    depth: np.ndarray | None = None  # [N, S, S] float32 metres, 0 = no measurement
    normals: np.ndarray | None = None  # [N, S, S, 3] float32 unit vectors (camera frame), 0 = none
    captions: list[str] | None = None  # texts for retrieval
    caption_image: np.ndarray | None = None  # [T] index of each caption's image
    web_captions: list[str] | None = None  # a shard split's web captions, one per image (web_retrieval)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class EvalSet:
    name: str
    train: EvalSplit | None  # probe-train; None where only training-free probes apply
    test: EvalSplit
    class_names: list[str | None] = field(default_factory=list)  # by label id; None: not an image class
    seg_classes: int = 0
    depth_max: float = 0.0  # metres: the depth probe's range; 0 = the largest probe-train depth
    depth_eval_crop: str = ""  # a DEPTH_CROPS name: where dinov2_linear scores depth; "": everywhere
    # probe -> why it cannot run on this data (e.g. shards without normals)
    unavailable: dict[str, str] = field(default_factory=dict)


def image_fingerprint(image) -> str:
    """What identifies an image across splits: its bytes' digest, or its resolved path."""
    if isinstance(image, (bytes, bytearray)):
        return hashlib.sha1(image).hexdigest()
    return str(Path(image).resolve())


def check_disjoint(es: EvalSet) -> None:
    """No probe-test image may appear in probe-train, by key or by content."""
    if es.train is None:
        return
    shared = set(es.train.keys) & set(es.test.keys)
    if shared:
        raise EvalDataError(f"{es.name}: probe-train and probe-test share keys, e.g. {sorted(shared)[:3]}")
    train_prints = {image_fingerprint(i): k for i, k in zip(es.train.images, es.train.keys)}
    for image, key in zip(es.test.images, es.test.keys):
        if image_fingerprint(image) in train_prints:
            raise EvalDataError(
                f"{es.name}: probe-test image {key!r} is also in probe-train "
                f"(as {train_prints[image_fingerprint(image)]!r})"
            )


def open_image(data_or_path):
    from PIL import Image

    if isinstance(data_or_path, (bytes, bytearray)):
        return Image.open(io.BytesIO(data_or_path))
    return Image.open(data_or_path)


def read_label_map(source, size: int, what: str) -> np.ndarray:
    """A PNG of indices (palette or greyscale) as uint8 [size, size], nearest-resized; palette
    images keep their indices (VOC), never their colours."""
    from PIL import Image

    try:
        with open_image(source) as img:
            if img.mode not in ("P", "L"):
                raise EvalDataError(f"{what}: expected a palette or greyscale PNG of class ids, got mode {img.mode}")
            return np.asarray(img.resize((size, size), Image.NEAREST), dtype=np.uint8)
    except OSError as err:
        raise EvalDataError(f"{what}: cannot read ({err})") from None


def read_depth_mm(source, size: int, what: str) -> np.ndarray:
    """A 16-bit PNG of millimetres as float32 metres [size, size] (0 stays 0: no measurement)."""
    from PIL import Image

    try:
        with open_image(source) as img:
            if not img.mode.startswith("I"):
                raise EvalDataError(f"{what}: expected a 16-bit depth PNG (millimetres), got mode {img.mode}")
            mm = np.asarray(img.resize((size, size), Image.NEAREST)).astype(np.float32)
    except OSError as err:
        raise EvalDataError(f"{what}: cannot read ({err})") from None
    return mm / 1000.0


def read_normals_png(source, size: int, what: str) -> np.ndarray:
    """An RGB PNG holding (n + 1) / 2 * 255 as float32 unit vectors [size, size, 3]; black = none."""
    from PIL import Image

    try:
        with open_image(source) as img:
            rgb = np.asarray(img.convert("RGB").resize((size, size), Image.NEAREST)).astype(np.float32)
    except OSError as err:
        raise EvalDataError(f"{what}: cannot read ({err})") from None
    n = rgb / 255.0 * 2.0 - 1.0
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid = rgb.any(axis=-1, keepdims=True) & (norm > 0.5)
    return np.where(valid, n / np.maximum(norm, 1e-6), 0.0).astype(np.float32)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def paired_pngs(images_dir: Path, pngs_dir: Path, what: str) -> list[tuple[Path, Path]]:
    """Each image of `images_dir` with the PNG of the same stem in `pngs_dir` (its label map or
    depth); a folder without images, or an image without its PNG, is an error naming the file."""
    images = list_images(images_dir)
    if not images:
        raise EvalDataError(f"{images_dir}: no images")
    pairs = []
    for path in images:
        png = pngs_dir / f"{path.stem}.png"
        if not png.is_file():
            raise EvalDataError(f"{png}: no such file (the {what} of {path.name})")
        pairs.append((path, png))
    return pairs


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise EvalDataError(f"{path}: no such folder ({what})")
    return path
