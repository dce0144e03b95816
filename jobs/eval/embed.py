"""`tipslab embed`: CLS_1, CLS_2 and patch-token embeddings of images, and text embeddings of
captions, from any tipslab checkpoint (official TIPS weights once imported), into one `.npz`."""

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tipslab.models.checkpoint import load_student
from tipslab.models.errors import DataError


class EmbedError(DataError):
    """An input image cannot be read; the message names the file."""


def read_image(path: str, size: int) -> torch.Tensor:
    """[3, size, size] in [0, 1] (the TIPS towers take unnormalised pixels)."""
    try:
        with Image.open(path) as img:
            pixels = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255.0
    except (OSError, ValueError) as err:
        raise EmbedError(f"{path}: cannot read the image ({err})") from None
    return F.interpolate(pixels[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


@torch.no_grad()
def embed(checkpoint_dir: str, images: list[str], texts: list[str], out: str, image_size: int | None = None) -> dict:
    """Writes `cls_web`, `cls_synthetic` [N, W], `patch_tokens` [N, P, W], `text` [M, W], plus the
    input names, to `out`; returns the arrays."""
    student, tokenizer, _ = load_student(checkpoint_dir)
    size = image_size or student.cfg.model.image_size
    arrays: dict[str, np.ndarray] = {"images": np.array(images, dtype=str), "texts": np.array(texts, dtype=str)}
    if images:
        feats = student.vision(torch.stack([read_image(p, size) for p in images]))
        arrays.update({k: v.numpy() for k, v in feats.items()})
    if texts:
        arrays["text"] = student.encode_text(torch.from_numpy(tokenizer.encode(texts))).numpy()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, **arrays)
    return arrays
