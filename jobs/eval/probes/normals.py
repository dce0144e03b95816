"""Surface normals from patch tokens: a linear map fit in closed form (ridge regression) from each
standardised patch token to the mean normal of its patch, upsampled bilinearly and normalised;
scored as the mean angular error in degrees over probe-test pixels that have a normal. (TIPS
follows Probe3D, whose probe is larger; a linear one keeps the comparison to the features.)"""

import math

import torch
import torch.nn.functional as F

from tipslab.jobs.eval import registry
from tipslab.jobs.eval.probes.context import ProbeContext, SplitFeatures
from tipslab.jobs.eval.probes.dense import Standardise

METRICS = registry.METRICS["normals"]
NEEDS = ("normals",)
TRAINED = True
RIDGE = 1e-3  # relative to the mean diagonal of X^T X: only keeps the solve well posed


def patch_means(normals: torch.Tensor, grid: int) -> torch.Tensor:
    """[N, S, S, 3] -> [N, 3, g, g] mean of each patch's pixels that have a normal."""
    x = normals.permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(x, grid)


def ridge(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[M, C], [M, K] -> weights [C + 1, K] (last row: bias)."""
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    gram = x.T @ x
    gram += RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram, x.T @ y.double()).float()


def angular_error_deg(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-pixel angle between [.., 3] normals, over pixels where gt is set."""
    valid = gt.norm(dim=-1) > 0.5
    cos = (F.normalize(pred[valid], dim=-1) * F.normalize(gt[valid], dim=-1)).sum(-1).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def fit(train: SplitFeatures, ctx: ProbeContext) -> dict:
    norm = Standardise(train.image["patch_tokens"])
    grid = norm(train.image["patch_tokens"])
    target = patch_means(torch.from_numpy(train.split.normals), grid.shape[-1])
    x = grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])
    return {"norm": norm, "weights": ridge(x, target.permute(0, 2, 3, 1).reshape(-1, 3))}


@torch.no_grad()
def score(model: dict, test: SplitFeatures, ctx: ProbeContext, batch: int = 16) -> dict:
    gt = torch.from_numpy(test.split.normals)
    grid, w = model["norm"](test.image["patch_tokens"]), model["weights"]
    errors = []
    for i in range(0, len(grid), batch):
        g = grid[i : i + batch].permute(0, 2, 3, 1)
        pred = (g @ w[:-1] + w[-1]).permute(0, 3, 1, 2)
        pred = F.interpolate(pred, size=gt.shape[1:3], mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        errors.append(angular_error_deg(pred, gt[i : i + batch]))
    errors = torch.cat(errors)
    return {"normals_mean_angle": errors.mean().item() if len(errors) else math.nan}


def protocol(ctx: ProbeContext, model: dict) -> dict:
    return {"name": "ridge_patch_means", "ridge": RIDGE, "label_size": ctx.data.test.normals.shape[1]}
