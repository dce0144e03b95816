"""Linear semantic segmentation on patch tokens, scored as mIoU in percent on probe-test."""

import torch

from tipslab.jobs.eval import registry
from tipslab.jobs.eval.probes.context import ProbeContext, SplitFeatures
from tipslab.jobs.eval.probes.dense import Standardise, dense_logits, fit_linear, nearest, pixels, train_size

METRICS = registry.METRICS["segmentation"]
NEEDS = ("segmentation",)
TRAINED = True
IGNORE = 255


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean IoU in percent over the classes present in the prediction or the ground truth;
    IGNORE pixels are not scored."""
    keep = target != IGNORE
    idx = target[keep].long() * num_classes + pred[keep].long()
    conf = torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return (inter[present] / union[present]).mean().item() * 100


def fit(train: SplitFeatures, ctx: ProbeContext) -> dict:
    ev, norm = ctx.ev, Standardise(train.image["patch_tokens"])
    grid = norm(train.image["patch_tokens"])
    size = train_size(ev, grid)
    target = nearest(torch.from_numpy(train.split.segmentation), size).long().flatten()
    target[target == IGNORE] = -100
    probe = fit_linear(pixels(grid, size), target, ctx.data.seg_classes, ev.seg_probe_epochs, ev.seg_probe_lr)
    return {"norm": norm, "probe": probe}


def score(model: dict, test: SplitFeatures, ctx: ProbeContext) -> dict:
    seg = torch.from_numpy(test.split.segmentation)
    grid = model["norm"](test.image["patch_tokens"])
    pred = torch.cat([logits.argmax(1).to(torch.uint8) for logits in dense_logits(model["probe"], grid, seg.shape[-1])])
    return {"seg_miou": mean_iou(pred, seg, ctx.data.seg_classes)}
