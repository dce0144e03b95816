"""L_distill: DINO-style self-distillation of local-crop CLS tokens to the teacher's CLS.

The teacher's prototype scores are centred (EMA of the batch mean, across ranks) and sharpened by a
low temperature; the student's are softened by a higher one; the loss is their cross-entropy.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .distributed import world
from .errors import ConfigError


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
        stats = torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])])
        if world()[1] > 1:
            dist.all_reduce(stats)
        count = stats[-1]
        moved = self.momentum * self.center + (1 - self.momentum) * stats[None, :-1] / count.clamp(min=1)
        # No rows on any rank: nothing to average, the centre stays (decided on device, no sync).
        self.center.copy_(torch.where(count > 0, moved, self.center))


def cross_entropy_to_targets(student_logits: torch.Tensor, targets: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Mean over rows of H(targets, softmax(student / T_s))."""
    return -(targets * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1).mean()


class DistillLoss(nn.Module):
    def __init__(self, prototypes: int, student_temp: float, center_momentum: float):
        super().__init__()
        self.student_temp = student_temp
        self.targets = CenteredTeacherTargets(prototypes, center_momentum)

    def forward(self, local_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """local_logits: [B, V, K] for V local crops; teacher_logits: [B, K] of the global crop."""
        b, v, k = local_logits.shape
        if v == 0:  # a mean over no crops would be NaN
            raise ConfigError(
                "L_distill needs local crops, but the batch has none (data.local_crops: 0); "
                "set data.local_crops > 0, or loss.distill_weight: 0 to switch it off"
            )
        targets = self.targets(teacher_logits, teacher_temp)
        targets = targets.unsqueeze(1).expand(b, v, k).reshape(b * v, k)
        return cross_entropy_to_targets(local_logits.reshape(b * v, k), targets, self.student_temp)
