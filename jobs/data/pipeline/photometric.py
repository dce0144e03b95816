"""DINOv2's photometric augmentations, drawn per view and applied to a whole batch of crops at once.

DINOv2 (its `DataAugmentationDINO`) gives every view colour jitter (p 0.8: brightness 0.4, contrast
0.4, saturation 0.2, hue 0.1, in a random order), grayscale (p 0.2), a Gaussian blur (kernel 9,
sigma 0.1 to 2) and, on its second global crop, solarisation (p 0.2). The blur's probability is per
view: 1.0 on the first global crop, 0.1 on the second, 0.5 on local crops. TIPS has one global crop;
here it is DINOv2's first or second global view with even odds, so both settings occur.

Speed: colour jitter and grayscale are affine maps of the RGB vector (hue as a rotation in YIQ
space, as NVIDIA DALI does it), so a view's whole jitter folds into one 3x3 matrix and an offset,
applied to the batch in one einsum. Unlike torchvision's ColorJitter, values are clipped to [0, 1]
once at the end rather than after each of the four steps. The blur is one grouped, separable
convolution over every blurred view of the batch, each with its own sigma.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LUMA = np.array([0.2989, 0.587, 0.114])  # ITU-R 601-2 luma, torchvision's rgb_to_grayscale weights
RGB_TO_YIQ = np.array([LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)
BLUR_KERNEL = 9
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128 / 255


@dataclass(frozen=True)
class ViewKind:
    """DINOv2's probabilities for one kind of view."""

    blur: float
    solarize: float
    jitter: float = 0.8
    grayscale: float = 0.2
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1


GLOBAL_1 = ViewKind(blur=1.0, solarize=0.0)
GLOBAL_2 = ViewKind(blur=0.1, solarize=0.2)
LOCAL = ViewKind(blur=0.5, solarize=0.0)


@dataclass
class Photometric:
    """One view's drawn augmentation: colour steps (an affine map of RGB), then blur, then solarisation.

    The colour steps are kept as drawn and folded into one map only once the view's mean colour is
    known, because contrast blends towards the image's mean grey (`colour_map`).
    """

    steps: tuple  # (("brightness"|"contrast"|"saturation"|"hue"|"grayscale", factor), ...)
    blur_sigma: float  # 0: no blur
    solarize: bool

    @property
    def is_identity(self) -> bool:
        return not self.steps and not self.blur_sigma and not self.solarize

    def colour_map(self, mean_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(3x3 matrix, offset 3) of the whole colour jitter and grayscale, for a view whose mean
        colour is `mean_rgb` before jitter."""
        matrix, offset = np.eye(3), np.zeros(3)
        ones = np.ones(3)
        for name, f in self.steps:
            if name == "brightness":
                step, add = f * np.eye(3), np.zeros(3)
            elif name == "contrast":  # blend with the mean grey of the current image
                mean_grey = LUMA @ (matrix @ mean_rgb + offset)
                step, add = f * np.eye(3), (1 - f) * mean_grey * ones
            elif name == "saturation":  # blend with the pixel's own grey
                step, add = f * np.eye(3) + (1 - f) * np.outer(ones, LUMA), np.zeros(3)
            elif name == "hue":  # rotate the chroma plane by f turns
                c, s = np.cos(2 * np.pi * f), np.sin(2 * np.pi * f)
                rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
                step, add = YIQ_TO_RGB @ rotation @ RGB_TO_YIQ, np.zeros(3)
            else:  # grayscale, replicated on the three channels
                step, add = np.outer(ones, LUMA), np.zeros(3)
            matrix, offset = step @ matrix, step @ offset + add
        return matrix, offset


def draw(rng: np.random.Generator, kind: ViewKind) -> Photometric:
    """One view's augmentation, in DINOv2's order: jitter, grayscale, blur, solarisation."""
    steps = []
    if rng.random() < kind.jitter:
        factors = {
            "brightness": rng.uniform(1 - kind.brightness, 1 + kind.brightness),
            "contrast": rng.uniform(1 - kind.contrast, 1 + kind.contrast),
            "saturation": rng.uniform(1 - kind.saturation, 1 + kind.saturation),
            "hue": rng.uniform(-kind.hue, kind.hue),
        }
        steps += [(name, factors[name]) for name in rng.permutation(list(factors))]
    if rng.random() < kind.grayscale:
        steps.append(("grayscale", 1.0))
    blur = rng.uniform(*BLUR_SIGMA) if rng.random() < kind.blur else 0.0
    return Photometric(tuple(steps), float(blur), bool(rng.random() < kind.solarize))


def gaussian_kernels(sigmas: torch.Tensor, size: int = BLUR_KERNEL) -> torch.Tensor:
    """[n, size] normalised 1-D Gaussian kernels, one per sigma."""
    r = torch.arange(size, dtype=torch.float32) - size // 2
    k = torch.exp(-(r[None, :] ** 2) / (2 * sigmas[:, None] ** 2))
    return k / k.sum(1, keepdim=True)


def blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of x [n, C, H, W] in [0, 1] with one sigma per image, reflect-padded
    (as torchvision's gaussian_blur pads)."""
    n, c, h, w = x.shape
    k = gaussian_kernels(sigmas).repeat_interleave(c, 0)  # one kernel per (image, channel)
    pad = BLUR_KERNEL // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, n * c, h + 2 * pad, w + 2 * pad)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w).clamp_(0, 1)  # a kernel summing to 1 + rounding may overshoot 1


def apply(x: torch.Tensor, views: list[Photometric]) -> torch.Tensor:
    """x: float [n, 3, H, W] in [0, 1], one `Photometric` per image; returns the augmented batch.

    The colour map runs over the whole batch (the identity for views that drew no jitter), which
    is cheaper than gathering and scattering the 80% that did; blur and solarisation, drawn less
    often, run on their views only.
    """
    if any(v.steps for v in views):
        means = x.mean(dim=(2, 3)).double().numpy()
        maps = [v.colour_map(m) if v.steps else (np.eye(3), np.zeros(3)) for v, m in zip(views, means)]
        matrix = torch.from_numpy(np.stack([m for m, _ in maps])).float()
        offset = torch.from_numpy(np.stack([o for _, o in maps])).float()
        x = torch.einsum("nij,njhw->nihw", matrix, x).add_(offset[:, :, None, None]).clamp_(0, 1)
    blurred = [i for i, v in enumerate(views) if v.blur_sigma]
    if blurred:
        x[blurred] = blur(x[blurred], torch.tensor([views[i].blur_sigma for i in blurred], dtype=torch.float32))
    solarized = [i for i, v in enumerate(views) if v.solarize]
    if solarized:
        part = x[solarized]
        x[solarized] = torch.where(part >= SOLARIZE_THRESHOLD, 1.0 - part, part)
    return x
