"""Linear probes on frozen patch tokens (DINOv2's linear protocol, small): a linear map of each
standardised patch token, logits upsampled bilinearly to the label, trained full-batch with AdamW.

Upsampling is linear, so upsampling the features once and training a per-pixel linear layer is the
same model as upsampling its logits, at a fraction of the cost per epoch.
"""

import torch
import torch.nn.functional as F


def patch_grid(patch_tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, C, g, g]."""
    b, n, c = patch_tokens.shape
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    return patch_tokens.transpose(1, 2).reshape(b, c, g, g)


def nearest(labels: torch.Tensor, size: int) -> torch.Tensor:
    """[N, S, S, ...] sampled at the centres of a size x size grid."""
    s = labels.shape[1]
    idx = ((torch.arange(size) + 0.5) * s / size).long()
    return labels[:, idx][:, :, idx]


def train_size(ev, grid: torch.Tensor) -> int:
    """The side of the label map dense probes train on: eval.dense_train_size (of the EvalConfig
    `ev`), 0 = the patch grid."""
    return ev.dense_train_size or grid.shape[-1]


class Standardise:
    """Per-channel mean and std of the probe-train patch tokens, applied to every split."""

    def __init__(self, train_tokens: torch.Tensor):
        self.mean = train_tokens.float().mean(dim=(0, 1))
        self.std = train_tokens.float().std(dim=(0, 1)) + 1e-6

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return patch_grid((tokens.float() - self.mean) / self.std)


def pixels(grid: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, g, g] -> [N * size * size, C], bilinearly upsampled."""
    up = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    return up.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])


def fit_linear(
    x: torch.Tensor, target: torch.Tensor, classes: int, epochs: int, lr: float, seed: int = 0, batch: int = 65536
) -> torch.nn.Linear:
    """Cross-entropy over `classes` with AdamW, `batch` pixels a step (one step an epoch for the
    scenes' probe splits; bounded memory for NYUv2 or ADE20k); targets of -100 are ignored (dropped
    up front: cross-entropy's own ignore_index path is several times slower)."""
    keep = target != -100
    x, target = x[keep], target[keep]
    gen = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():  # a seeded initialisation, independent of the global RNG
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=gen) * x.shape[1] ** -0.5 * 0.1)
        probe.bias.zero_()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen) if len(x) > batch else None
        for i in range(0, len(x), batch):
            xb, tb = (x, target) if order is None else (x[order[i : i + batch]], target[order[i : i + batch]])
            loss = F.cross_entropy(probe(xb), tb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval()


@torch.no_grad()
def dense_logits(probe: torch.nn.Module, grid: torch.Tensor, size: int, batch: int = 16):
    """Yield [b, K, size, size] logits of the probe-test images, a batch at a time."""
    for i in range(0, len(grid), batch):
        logits = probe(grid[i : i + batch].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        yield F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- the standard protocols' trainer
IMAGES_PER_STEP = 16  # DINOv2's dense linear probes: 8 GPUs x 2 images


def device() -> torch.device:
    """Where the standard protocols train and score: the GPU when this process has one (a probe on
    whole label maps is ~1000x the patch-grid work)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit_images(head: torch.nn.Module, n: int, loss, epochs: int, lr: float, seed: int = 0) -> torch.nn.Module:
    """AdamW over minibatches of IMAGES_PER_STEP of the n probe-train images, `loss(head, index)`
    on each, the learning rate decaying linearly to 0 (mmsegmentation's poly schedule, as in
    DINOv2's dense evaluations). The head is seeded, trained on device() and returned on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a seeded initialisation, independent of the global RNG
        for p in head.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5 * 0.1)
            else:
                p.zero_()
    head = head.to(device())
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * -(-n // IMAGES_PER_STEP))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, IMAGES_PER_STEP):
            value = loss(head, order[i : i + IMAGES_PER_STEP])
            opt.zero_grad()
            value.backward()
            opt.step()
            sched.step()
    return head.cpu().eval()


def per_pixel(head: torch.nn.Module, grid: torch.Tensor) -> torch.Tensor:
    """A linear head on every cell of [B, C, g, g] -> [B, K, g, g]."""
    return head(grid.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def score_batch(channels: int, size: int, budget: int = 1 << 26) -> int:
    """Images per scoring batch whose [b, channels, size, size] logits stay within `budget` floats."""
    return max(1, min(16, budget // (channels * size * size)))
