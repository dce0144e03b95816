"""Linear semantic segmentation on patch tokens, scored as mIoU in percent on probe-test, at the
label maps' resolution: the probe's logits on the patch grid are upsampled bilinearly to the label
map and each pixel takes the largest. Two ways to train it (eval.seg_protocol, docs/probes.md):

- patch_grid: on labels sampled at the patch-cell centres (or eval.dense_train_size), full-batch:
  seconds on a CPU (the probe splits of the scenes, smoke runs);
- linear_upsampled: DINOv2's linear protocol, the logits upsampled to the whole label map and the
  cross-entropy taken over every labelled pixel, in minibatches of images (standard datasets).
"""

import torch
import torch.nn.functional as F

from tipslab.jobs.eval import registry
from tipslab.jobs.eval.probes.context import ProbeContext, SplitFeatures
from tipslab.jobs.eval.probes.dense import (
    IMAGES_PER_STEP,
    Standardise,
    dense_logits,
    device,
    fit_images,
    fit_linear,
    nearest,
    per_pixel,
    pixels,
    score_batch,
    train_size,
    upsample,
)

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
    labels = torch.from_numpy(train.split.segmentation)
    if ctx.protocol("segmentation") == "linear_upsampled":
        return {"norm": norm, "probe": fit_upsampled(grid, labels, ctx.data.seg_classes, ev)}
    size = train_size(ev, grid)
    target = nearest(labels, size).long().flatten()
    target[target == IGNORE] = -100
    probe = fit_linear(pixels(grid, size), target, ctx.data.seg_classes, ev.seg_probe_epochs, ev.seg_probe_lr)
    return {"norm": norm, "probe": probe}


def fit_upsampled(grid: torch.Tensor, labels: torch.Tensor, classes: int, ev) -> torch.nn.Linear:
    """Cross-entropy of the logits upsampled to the label map, over every pixel but IGNORE."""
    at = device()

    def loss(head, index):
        target = labels[index].to(at).long()
        logits = upsample(per_pixel(head, grid[index].to(at)), target.shape[-1])
        return F.cross_entropy(logits, target, ignore_index=IGNORE)

    return fit_images(torch.nn.Linear(grid.shape[1], classes), len(grid), loss, ev.seg_probe_epochs, ev.seg_probe_lr)


@torch.no_grad()
def score(model: dict, test: SplitFeatures, ctx: ProbeContext) -> dict:
    seg = torch.from_numpy(test.split.segmentation)
    grid = model["norm"](test.image["patch_tokens"])
    if ctx.protocol("segmentation") == "linear_upsampled":
        at, probe, size = device(), model["probe"].to(device()), seg.shape[-1]
        step = score_batch(ctx.data.seg_classes, size)
        batches = (upsample(per_pixel(probe, grid[i : i + step].to(at)), size) for i in range(0, len(grid), step))
    else:
        batches = dense_logits(model["probe"], grid, seg.shape[-1])
    pred = torch.cat([logits.argmax(1).to(torch.uint8).cpu() for logits in batches])
    return {"seg_miou": mean_iou(pred, seg, ctx.data.seg_classes)}


def protocol(ctx: ProbeContext, model: dict) -> dict:
    """The protocol's name and settings, as eval_results.json and MLflow record them."""
    ev, name = ctx.ev, ctx.protocol("segmentation")
    common = {"label_size": ctx.data.test.segmentation.shape[-1], "epochs": ev.seg_probe_epochs, "lr": ev.seg_probe_lr}
    if name == "linear_upsampled":
        return {
            "name": name,
            **common,
            "images_per_step": IMAGES_PER_STEP,
            "schedule": "adamw, linear decay",
            "source": "DINOv2",
        }
    return {
        "name": name,
        **common,
        "train_labels": ev.dense_train_size or "patch grid",
        "schedule": "adamw, full batch",
    }
