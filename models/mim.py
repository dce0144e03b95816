"""L_mim: iBOT-style masked image modelling against the EMA teacher's patch prototypes.

The student sees the masked image; for every masked patch its prototype scores are matched to the
teacher's (centred, sharpened) scores of the same patch in the clean image.
"""
import torch
from torch import nn

from .distill import CenteredTeacherTargets, cross_entropy_to_targets


class MIMLoss(nn.Module):
    def __init__(self, prototypes: int, student_temp: float, center_momentum: float):
        super().__init__()
        self.student_temp = student_temp
        self.targets = CenteredTeacherTargets(prototypes, center_momentum)

    def forward(self, student_patch_logits: torch.Tensor, teacher_patch_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Both [M, K]: the masked patches of the whole batch, in the same order."""
        if student_patch_logits.shape[0] == 0:
            return student_patch_logits.sum() * 0.0
        targets = self.targets(teacher_patch_logits, teacher_temp)
        return cross_entropy_to_targets(student_patch_logits, targets, self.student_temp)
