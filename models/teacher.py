"""The EMA teacher: a frozen copy of the student's image tower and heads, updated by momentum.

The update is two fused calls over the parameter lists (as DINOv2 does); the teacher stays in eval
mode and never receives gradients. Only the DINO and iBOT heads have a teacher copy: the text tower
and the tagging head are trained against data, not against the teacher.
"""

import copy

import torch
from torch import nn

from .config import masked_count
from .mim import masked_tokens
from .tips import TIPSStudent, head_outputs

# "head": the one head of both terms with model.shared_heads, where distill_head and mim_head are
# references to it (in the student, and so in the copy: one deepcopy memo keeps the sharing).
TEACHER_PARTS = ("vision", "distill_head", "mim_head", "head")


class EMATeacher(nn.Module):
    def __init__(self, student: TIPSStudent):
        super().__init__()
        memo: dict = {}
        for name in TEACHER_PARTS:
            part = getattr(student, name)
            copied = copy.deepcopy(part, memo) if part is not None else None
            if part is None or name in student._modules:
                setattr(self, name, copied)
            else:  # a reference to a part registered under another name: registered once here too
                object.__setattr__(self, name, copied)
        self.loss_cfg = student.cfg.loss  # mask_ratio, and chunk_rows: scores, or features for the chunked loss
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def _pairs(self, student: TIPSStudent) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        mine, theirs = [], []
        for name in TEACHER_PARTS:
            if self._modules.get(name) is not None:  # registered parts only: a shared head moves once
                mine += list(getattr(self, name).parameters())
                theirs += list(getattr(student, name).parameters())
        return mine, theirs

    @torch.no_grad()
    def update(self, student: TIPSStudent, momentum: float) -> None:
        mine, theirs = self._pairs(student)
        torch._foreach_mul_(mine, momentum)
        torch._foreach_add_(mine, [p.detach() for p in theirs], alpha=1.0 - momentum)

    @torch.no_grad()
    def forward(self, global_crop: torch.Tensor, masks: torch.Tensor | None, distill_cls: str) -> dict:
        """Teacher scores on the clean global crop: its CLS, and the patches the student had masked."""
        view = self.vision(global_crop)
        out = {}
        if self.distill_head is not None:
            out.update(head_outputs(self.distill_head, view[distill_cls], "teacher_distill", self.loss_cfg))
        if self.mim_head is not None and masks is not None:
            count = masked_count(self.loss_cfg.mask_ratio, masks.shape[1])
            tokens = masked_tokens(view["patch_tokens"], masks, count)
            out.update(head_outputs(self.mim_head, tokens, "teacher_mim", self.loss_cfg))
        return out
