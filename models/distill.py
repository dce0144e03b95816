"""L_distill: DINO-style self-distillation of local-crop CLS tokens to the teacher's CLS.

The teacher's prototype scores are centred (EMA of the batch mean, across ranks) and sharpened by a
low temperature; the student's are softened by a higher one; the loss is their cross-entropy.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_mean


class CenteredTeacherTargets(nn.Module):
    """Teacher probabilities with DINO centring; the centre is part of the state (a buffer)."""

    def __init__(self, prototypes: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, prototypes))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        probs = F.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)
        batch_center = all_reduce_mean(teacher_logits.float().mean(dim=0, keepdim=True))
        self.center.mul_(self.momentum).add_(batch_center, alpha=1 - self.momentum)
        return probs


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
        targets = self.targets(teacher_logits, teacher_temp)
        b, v, k = local_logits.shape
        targets = targets.unsqueeze(1).expand(b, v, k).reshape(b * v, k)
        return cross_entropy_to_targets(local_logits.reshape(b * v, k), targets, self.student_temp)
