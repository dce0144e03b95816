"""Linear monocular depth on patch tokens, depth as classification over bins, in one of two
protocols (eval.depth_protocol, docs/probes.md):

- scenes_bins (the cheap variant, the scenes' numbers): uniform bins on (0, depth max] trained with
  cross-entropy on the bin of each patch-cell centre, read out per patch as the softmax-weighted mean
  of the bin centres and upsampled bilinearly; every measured pixel scored;
- dinov2_linear: DINOv2's "lin. 1" (dinov2_depth.py), the protocol of TIPS's depth numbers.

Scored per image and averaged: RMSE (metres), AbsRel, and δ1 (percent of pixels within a factor 1.25).
"""

import torch
import torch.nn.functional as F

from tipslab.jobs.eval import registry
from tipslab.jobs.eval.probes import dinov2_depth
from tipslab.jobs.eval.probes.context import ProbeContext, SplitFeatures
from tipslab.jobs.eval.probes.dense import Standardise, fit_linear, nearest, pixels, train_size

METRICS = registry.METRICS["depth"]
NEEDS = ("depth",)
TRAINED = True


def bin_centres(bins: int, depth_max: float) -> torch.Tensor:
    return (torch.arange(bins) + 0.5) * depth_max / bins


def to_bins(depth: torch.Tensor, bins: int, depth_max: float) -> torch.Tensor:
    """Bin index per pixel; -100 (ignored) where nothing was measured."""
    idx = (depth / depth_max * bins).long().clamp(0, bins - 1)
    return torch.where(depth > 0, idx, torch.full_like(idx, -100))


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, scored: torch.Tensor | None = None) -> dict:
    """Per-image metrics over the `scored` pixels (default: measured ones, gt > 0), averaged over
    images that have any."""
    rmse, absrel, delta1 = [], [], []
    for i, (p, g) in enumerate(zip(pred, gt)):
        valid = g > 0 if scored is None else scored[i]
        if not valid.any():
            continue
        p, g = p[valid].clamp(min=1e-3), g[valid]
        rmse.append(((p - g) ** 2).mean().sqrt())
        absrel.append(((p - g).abs() / g).mean())
        delta1.append((torch.maximum(p / g, g / p) < 1.25).float().mean() * 100)
    return {
        "depth_rmse": torch.stack(rmse).mean().item(),
        "depth_absrel": torch.stack(absrel).mean().item(),
        "depth_delta1": torch.stack(delta1).mean().item(),
    }


def fit(train: SplitFeatures, ctx: ProbeContext) -> dict:
    ev = ctx.ev
    depth = torch.from_numpy(train.split.depth)
    depth_max = ev.depth_max or ctx.data.depth_max or float(depth.max())
    if ctx.protocol("depth") == "dinov2_linear":
        return dinov2_depth.fit(train.image, depth, depth_max, ev)
    norm = Standardise(train.image["patch_tokens"])
    grid = norm(train.image["patch_tokens"])
    size = train_size(ev, grid)
    target = to_bins(nearest(depth, size), ev.depth_bins, depth_max)
    probe = fit_linear(pixels(grid, size), target.flatten(), ev.depth_bins, ev.depth_probe_epochs, ev.depth_probe_lr)
    return {"norm": norm, "probe": probe, "depth_max": depth_max}


@torch.no_grad()
def score(model: dict, test: SplitFeatures, ctx: ProbeContext) -> dict:
    gt = torch.from_numpy(test.split.depth)
    if ctx.protocol("depth") == "dinov2_linear":
        pred = dinov2_depth.predict_all(model, test.image, gt.shape[-1])
        return depth_metrics(pred, gt, dinov2_depth.evaluated(gt, model["depth_max"], ctx.data.depth_eval_crop))
    centres = bin_centres(ctx.ev.depth_bins, model["depth_max"])
    grid = model["norm"](test.image["patch_tokens"])
    # Depth is read out on the patch grid and the depth map upsampled: upsampling 256-bin logits to
    # every pixel first costs ~100x more and moves the metrics little.
    patch_depth = model["probe"](grid.permute(0, 2, 3, 1)).softmax(-1) @ centres
    pred = F.interpolate(patch_depth[:, None], size=gt.shape[1:], mode="bilinear", align_corners=False)[:, 0]
    return depth_metrics(pred, gt)


def protocol(ctx: ProbeContext, model: dict) -> dict:
    """The protocol's name and settings, as eval_results.json and MLflow record them."""
    ev, name = ctx.ev, ctx.protocol("depth")
    depth_max = float(f"{model['depth_max']:.4g}")  # a scene set's largest depth: 4 digits tell it
    common = {"bins": ev.depth_bins, "depth_max": depth_max, "label_size": ctx.data.test.depth.shape[-1]}
    common.update(epochs=ev.depth_probe_epochs, lr=ev.depth_probe_lr)
    if name == "dinov2_linear":
        return {
            "name": name,
            **common,
            "bin_spacing": ev.depth_bin_spacing,
            "min_depth": dinov2_depth.MIN_DEPTH,
            "cls_token": dinov2_depth.CLS_TOKEN,
            "upsample": dinov2_depth.UPSAMPLE,
            "loss": f"silog(variance_focus={dinov2_depth.VARIANCE_FOCUS})",
            "eval_crop": ctx.data.depth_eval_crop or "none",
            "source": "DINOv2 lin. 1",
        }
    return {"name": name, **common, "train_labels": ev.dense_train_size or "patch grid", "loss": "bin cross-entropy"}
