"""L_distill: DINO-style self-distillation of local-crop CLS tokens to the teacher's CLS.

The teacher's prototype scores are centred and sharpened by a low temperature; the student's are
softened by a higher one; the loss is their cross-entropy. Centring (loss.centering) is DINO's mean
centring (an EMA of the batch mean, across ranks) or DINOv2's Sinkhorn-Knopp balancing of the
prototypes over the whole batch of every rank; L_MIM (models/mim.py) uses the same targets.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .distributed import world
from .errors import ConfigError
from .prototype_loss import CenteredTargets, GivenTargets, prototype_cross_entropy


class CenteredTeacherTargets(nn.Module):
    """Teacher probabilities with DINO centring; the centre is part of the state (a buffer)."""

    def __init__(self, prototypes: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, prototypes))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        probs = F.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)
        self.update(teacher_logits)
        return probs

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """Move the centre towards the mean of every rank's rows: the sum and the count are reduced
        together (one all_reduce), so ranks with unequal or zero rows weigh each row equally. Every
        rank must call this once per step, rows or not: it is a collective."""
        rows = teacher_logits.float().reshape(-1, self.center.shape[1])
        self._move(torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])]))

    @torch.no_grad()
    def chunked(
        self, features: torch.Tensor, weight: torch.Tensor, temperature: float, repeat: int = 1
    ) -> CenteredTargets:
        """The targets of the teacher's features [M, D] and prototype weight [K, D], made a chunk at
        a time by the loss (models/prototype_loss.py), with the centre as it is now; then the centre
        moves as `update` moves it. The rows' sum of scores is (sum of features) W^T, in fp32: no
        [M, K] tensor is made. A collective, like `update`."""
        targets = CenteredTargets(features, weight, self.center.clone(), temperature, repeat)
        with torch.autocast(features.device.type, enabled=False):
            total = F.linear(features.float().sum(0), weight.float())
        self._move(torch.cat([total, total.new_tensor([features.shape[0]])]))
        return targets

    def _move(self, stats: torch.Tensor) -> None:
        """stats: this rank's sum of scores [K] and its row count, one vector (reduced in one call)."""
        if world()[1] > 1:
            dist.all_reduce(stats)
        count = stats[-1]
        moved = self.momentum * self.center + (1 - self.momentum) * stats[None, :-1] / count.clamp(min=1)
        # No rows on any rank: nothing to average, the centre stays (decided on device, no sync).
        self.center.copy_(torch.where(count > 0, moved, self.center))


class SinkhornKnoppTargets(nn.Module):
    """Teacher probabilities balanced over the prototypes by Sinkhorn-Knopp (DINOv2's centring).

    exp(scores / T) is scaled alternately so that every prototype carries the same mass over the
    batch of every rank, then so that every row sums to 1, `iterations` times; the rows come out
    summing to 1 and the prototypes' columns near uniform. Stateless: nothing to carry or resume.
    """

    def __init__(self, iterations: int):
        super().__init__()
        self.iterations = iterations

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return sinkhorn_knopp(teacher_logits, temperature, self.iterations)

    @torch.no_grad()
    def chunked(
        self, features: torch.Tensor, weight: torch.Tensor, temperature: float, repeat: int = 1
    ) -> GivenTargets:
        """The balancing spans every row, so the targets [M, K] are made whole (once, without a
        gradient); only the student's side of the loss is then chunked."""
        return GivenTargets(self(F.linear(features, weight), temperature), repeat)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temperature: float, iterations: int) -> torch.Tensor:
    """Targets [N, K] for this rank's rows [N, K], computed as if on the rows of every rank
    concatenated (N may differ by rank, or be 0). Every rank must call this, rows or not: it takes
    1 + `iterations` all_reduces. The scores are shifted by their largest value over every rank (a
    constant factor, which the first balancing removes) so that exp cannot overflow; with prototype
    weights of norm 1 (model.head_norm_last_layer) the scores are cosines and nothing underflows at
    the usual temperatures either."""
    x = teacher_logits.float() / temperature
    distributed = world()[1] > 1
    # The largest score, -inf for no rows (a max over an empty tensor raises), without a host read.
    top = torch.cat([x.reshape(-1), x.new_full((1,), float("-inf"))]).max()
    if distributed:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    # In place from here (x is a new tensor): at the MIM targets' size ([masked patches, 32k]) each
    # copy would cost as much as the targets themselves.
    q = x.sub_(top).exp_()
    tiny = torch.finfo(q.dtype).tiny  # a prototype (or row) with no mass stays 0, not 0/0
    for _ in range(iterations):
        mass = q.sum(0)  # each prototype's mass over this rank's rows, then over every rank's
        if distributed:
            dist.all_reduce(mass)
        q.div_(mass.clamp(min=tiny))
        q.div_(q.sum(1, keepdim=True).clamp(min=tiny))
    return q


def teacher_targets(centering: str, prototypes: int, momentum: float, iterations: int) -> nn.Module:
    """The targets module of loss.centering: "mean" (DINO) or "sinkhorn_knopp" (DINOv2)."""
    if centering == "sinkhorn_knopp":
        return SinkhornKnoppTargets(iterations)
    return CenteredTeacherTargets(prototypes, momentum)


def cross_entropy_to_targets(student_logits: torch.Tensor, targets: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Mean over rows of H(targets, softmax(student / T_s))."""
    return -(targets * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1).mean()


class PrototypeTargetsLoss(nn.Module):
    """What L_distill and L_MIM share: the student's temperature and the teacher's targets over the
    prototypes (centred, or Sinkhorn-Knopp balanced)."""

    def __init__(
        self,
        prototypes: int,
        student_temp: float,
        center_momentum: float,
        centering: str = "mean",
        sinkhorn_iterations: int = 3,
    ):
        super().__init__()
        self.student_temp = student_temp
        self.targets = teacher_targets(centering, prototypes, center_momentum, sinkhorn_iterations)


class DistillLoss(PrototypeTargetsLoss):
    def forward(self, local_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """local_logits: [B, V, K] for V local crops; teacher_logits: [B, K] of the global crop."""
        b, v, k = local_logits.shape
        no_local_crops(v)
        targets = self.targets(teacher_logits, teacher_temp)
        targets = targets.unsqueeze(1).expand(b, v, k).reshape(b * v, k)
        return cross_entropy_to_targets(local_logits.reshape(b * v, k), targets, self.student_temp)

    def chunked(
        self,
        local_features: torch.Tensor,
        prototypes: torch.Tensor,
        teacher_features: torch.Tensor,
        teacher_prototypes: torch.Tensor,
        teacher_temp: float,
        chunk_rows: int,
    ) -> torch.Tensor:
        """The same loss from the heads' features before their prototype layer (local [B, V, D],
        teacher [B, D]) and that layer's weights [K, D], `chunk_rows` rows at a time
        (models/prototype_loss.py): no [B * V, K] tensor is held."""
        b, v, d = local_features.shape
        no_local_crops(v)
        targets = self.targets.chunked(teacher_features, teacher_prototypes, teacher_temp, repeat=v)
        return prototype_cross_entropy(
            local_features.reshape(b * v, d), prototypes, targets, self.student_temp, chunk_rows
        )


def no_local_crops(views: int) -> None:
    if views == 0:  # a mean over no crops would be NaN
        raise ConfigError(
            "L_distill needs local crops, but the batch has none (data.local_crops: 0); "
            "set data.local_crops > 0, or loss.distill_weight: 0 to switch it off"
        )
