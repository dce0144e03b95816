"""DINOv2's linear depth protocol ("lin. 1", which TIPS's depth numbers follow; DINOv2 paper,
Sec. 7.4, and its evaluation code's linear depth head and SigLoss): a linear map of each patch
token concatenated with the image's CLS token to 256 depth bins; the bin logits, upsampled 4x
bilinearly, go through AdaBins' linear normalisation (relu + 0.1, divided by their sum) and the
depth is the probability-weighted sum of the bin centres, upsampled bilinearly to the label map.
Trained on the depth with the scale-invariant log loss (SILog, variance focus 0.85, as AdaBins and
DINOv2); scored on pixels with a depth in (1 mm, depth max] inside the dataset's evaluation crop
(NYUv2: Eigen's crop, rows 45:471 and columns 41:601 of the 480 x 640 frame, scaled to the label
map). The patch and CLS tokens are standardised with probe-train statistics (DINOv2's batch norm).
"""

import math

import torch

from tipslab.jobs.eval.evalsets.base import DEPTH_CROPS
from tipslab.jobs.eval.probes.dense import Standardise, device, fit_images, per_pixel, upsample

MIN_DEPTH = 1e-3  # metres: DINOv2's min_depth, the first bin and the evaluation's floor
UPSAMPLE = 4  # DINOv2's linear depth head upsamples its input 4x
NORM_EPS = 0.1  # AdaBins' linear normalisation of the bin scores
SILOG_EPS = 1e-3  # inside the logs of SILog
VARIANCE_FOCUS = 0.85  # SILog: var(g) + (1 - 0.85) mean(g)^2
CLS_TOKEN = "cls_web"  # CLS_1, the token the paper's image-level probes use


def bin_centres(bins: int, depth_max: float, spacing: str) -> torch.Tensor:
    """`bins` centres from MIN_DEPTH to depth_max: evenly (DINOv2's "UD") or evenly in log depth."""
    if spacing == "log":
        return torch.logspace(math.log10(MIN_DEPTH), math.log10(depth_max), bins)
    return torch.linspace(MIN_DEPTH, depth_max, bins)


def silog(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """sqrt(var(g) + (1 - VARIANCE_FOCUS) mean(g)^2), g = log pred - log gt over the valid pixels."""
    g = torch.log(pred[valid] + SILOG_EPS) - torch.log(gt[valid] + SILOG_EPS)
    if g.numel() < 2:
        return pred.sum() * 0
    return torch.sqrt(g.var() + (1 - VARIANCE_FOCUS) * g.mean() ** 2)


def inputs(norm: Standardise, cls_norm: Standardise, image: dict) -> torch.Tensor:
    """[N, 2D, g, g]: each standardised patch token with the image's standardised CLS token."""
    grid = norm(image["patch_tokens"])
    cls = cls_norm(image[CLS_TOKEN][:, None])  # [N, D, 1, 1]
    return torch.cat([grid, cls.expand(-1, -1, *grid.shape[2:])], dim=1)


def predict(head: torch.nn.Module, x: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 2D, g, g] -> [B, size, size] metres. The head is linear, so upsampling its logits is
    upsampling its input, as DINOv2 does, at a fraction of the cost."""
    logits = upsample(per_pixel(head, x), x.shape[-1] * UPSAMPLE)
    p = torch.relu(logits) + NORM_EPS
    depth = torch.einsum("bkhw,k->bhw", p / p.sum(dim=1, keepdim=True), centres)
    return upsample(depth[:, None], size)[:, 0]


def crop_mask(crop: str, size: int) -> torch.Tensor:
    """[size, size]: True inside the named crop (evalsets DEPTH_CROPS, scaled to the map), or
    everywhere for "" (no crop)."""
    if not crop:
        return torch.ones(size, size, dtype=torch.bool)
    mask = torch.zeros(size, size, dtype=torch.bool)
    top, bottom, left, right = (round(f * size) for f in DEPTH_CROPS[crop])
    mask[top:bottom, left:right] = True
    return mask


def evaluated(gt: torch.Tensor, depth_max: float, crop: str) -> torch.Tensor:
    """The pixels a depth is scored on: measured within (MIN_DEPTH, depth_max], inside the crop."""
    return (gt > MIN_DEPTH) & (gt <= depth_max) & crop_mask(crop, gt.shape[-1])


def fit(image: dict, depth: torch.Tensor, depth_max: float, ev) -> dict:
    norm, cls_norm = Standardise(image["patch_tokens"]), Standardise(image[CLS_TOKEN][:, None])
    x = inputs(norm, cls_norm, image)
    centres = bin_centres(ev.depth_bins, depth_max, ev.depth_bin_spacing)
    at = device()
    on_device = centres.to(at)

    def loss(head, index):
        gt = depth[index].to(at)
        pred = predict(head, x[index].to(at), on_device, gt.shape[-1])
        return silog(pred, gt, (gt > 0) & (gt <= depth_max))

    head = fit_images(
        torch.nn.Linear(x.shape[1], ev.depth_bins), len(x), loss, ev.depth_probe_epochs, ev.depth_probe_lr
    )
    return {"norm": norm, "cls_norm": cls_norm, "head": head, "centres": centres, "depth_max": depth_max}


@torch.no_grad()
def predict_all(model: dict, image: dict, size: int) -> torch.Tensor:
    """[N, size, size] metres for every image, a batch at a time on device()."""
    x, at = inputs(model["norm"], model["cls_norm"], image), device()
    head, centres = model["head"].to(at), model["centres"].to(at)
    return torch.cat([predict(head, x[i : i + 16].to(at), centres, size).cpu() for i in range(0, len(x), 16)])
