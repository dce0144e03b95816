"""Schedules as arrays indexed by step (DINOv2's habit): trivially resumable and plottable."""

import numpy as np


def cosine_schedule(
    start: float, end: float, steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up from `warmup_start` to `start`, then a cosine from `start` to `end`."""
    warmup_steps = min(warmup_steps, steps)
    warmup = np.linspace(warmup_start, start, warmup_steps, endpoint=False)
    rest = steps - warmup_steps
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * np.arange(rest) / max(rest, 1)))
    return np.concatenate([warmup, cosine]).astype(np.float64)
