"""The MIM masks over the global crop's patch grid: random, or blockwise (BEiT/iBOT/DINOv2 style).

TIPS masks 75% of the patches at random; blockwise masking at 75% scored the same (the TIPS paper's ablation). Both
modes mask exactly `round(ratio * patches)` patches, so every row of a batch has the same count and
the masked-token tensors have static sizes (DINOv2 makes its masks in the data pipeline too).
"""

import math

import numpy as np

from tipslab.models.config import MASK_MODES, masked_count
from tipslab.models.errors import ConfigError

# DINOv2's MaskingGenerator: blocks of at least 4 patches, aspect ratio 0.3 to 1/0.3, at most
# half the grid per block, 10 tries per block.
MIN_BLOCK = 4
BLOCK_ASPECT = (0.3, 1 / 0.3)
BLOCK_TRIES = 10


def random_mask(rng: np.random.Generator, patches: int, masked: int) -> np.ndarray:
    mask = np.zeros(patches, dtype=bool)
    mask[rng.choice(patches, masked, replace=False)] = True
    return mask


def _add_block(rng: np.random.Generator, mask: np.ndarray, budget: int) -> int:
    """Mask one rectangle of new patches, no more than `budget` of them; returns how many."""
    height, width = mask.shape
    log_aspect = (math.log(BLOCK_ASPECT[0]), math.log(BLOCK_ASPECT[1]))
    for _ in range(BLOCK_TRIES):
        area = rng.uniform(MIN_BLOCK, max(budget, MIN_BLOCK))
        aspect = math.exp(rng.uniform(*log_aspect))
        h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < h < height and 0 < w < width:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= budget:
                block[...] = True
                return new
    return 0


def blockwise_mask(rng: np.random.Generator, grid: int, masked: int) -> np.ndarray:
    """Rectangles until `masked` patches are covered; when no block fits the remaining budget, the
    last few patches are picked at random among the unmasked ones, to keep the count exact."""
    mask = np.zeros((grid, grid), dtype=bool)
    count = 0
    max_block = max(grid * grid // 2, MIN_BLOCK)
    while count < masked:
        added = _add_block(rng, mask, min(masked - count, max_block))
        if added == 0:
            break
        count += added
    flat = mask.reshape(-1)
    if count < masked:
        flat[rng.choice(np.flatnonzero(~flat), masked - count, replace=False)] = True
    return flat


def make_mask(rng: np.random.Generator, mode: str, grid: int, ratio: float) -> np.ndarray:
    """A bool mask over the grid x grid patches (row-major, True = masked)."""
    masked = masked_count(ratio, grid * grid)
    if mode == "random":
        return random_mask(rng, grid * grid, masked)
    if mode == "blockwise":
        return blockwise_mask(rng, grid, masked)
    raise ConfigError(f"loss.mask_mode: {mode!r} is not one of {MASK_MODES}")
