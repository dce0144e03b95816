"""The TIPS objective, with its whole weighting in one place.

total = ½ (L_clip(CLS_1, web) + L_clip(CLS_2, synthetic)) + α L_distill + β L_mim + γ L_tag
(the caption modes of the ablations replace the first term, which loss.clip_weight scales, 1 in the
paper; L_tag is Tag2Text's tagging loss, off by default). A term whose weight is 0 is skipped, and
with both α and β at 0 there is no teacher at all. With loss.chunk_rows > 0, L_distill and L_MIM
are computed in chunks of rows from the heads' features (models/prototype_loss.py).
"""

import torch
from torch import nn

from .config import TIPSConfig
from .contrastive import clip_loss
from .distill import DistillLoss
from .mim import MIMLoss
from .tagging import asymmetric_loss


class TIPSObjective(nn.Module):
    def __init__(self, cfg: TIPSConfig):
        super().__init__()
        loss = cfg.loss
        k_distill, k_mim = cfg.model.prototypes()
        self.cfg = cfg
        centring = (loss.center_momentum, loss.centering, loss.sinkhorn_iterations)
        self.distill = DistillLoss(k_distill, loss.student_temp, *centring) if loss.distill_weight > 0 else None
        self.mim = MIMLoss(k_mim, loss.student_temp, *centring) if loss.mim_weight > 0 else None

    @property
    def needs_teacher(self) -> bool:
        return self.distill is not None or self.mim is not None

    def forward(self, student_out: dict, teacher_out: dict, teacher_temp: float) -> tuple[torch.Tensor, dict]:
        loss = self.cfg.loss
        t = student_out["temperature"]
        terms: dict[str, torch.Tensor] = {}
        if loss.clip_weight > 0:  # 0 only for a stage that drops the contrastive term (loss.clip_weight)
            if loss.caption_mode == "dual_cls":
                terms["clip_web"] = clip_loss(student_out["cls_web"], student_out["text_web"], t)
                terms["clip_synthetic"] = clip_loss(student_out["cls_synthetic"], student_out["text_synthetic"], t)
                clip = 0.5 * (terms["clip_web"] + terms["clip_synthetic"])
            elif loss.caption_mode == "synthetic":
                clip = clip_loss(student_out["cls_web"], student_out["text_synthetic"], t)
            else:  # web, or both captions sampled onto the one CLS token
                clip = clip_loss(student_out["cls_web"], student_out["text_web"], t)
            terms["clip"] = clip
            total = loss.clip_weight * clip
        else:
            total = t.new_zeros(())
        s, te, chunk = student_out, teacher_out, loss.chunk_rows
        if self.distill is not None:
            if chunk:  # the heads gave features and prototype weights (models/tips.py, head_outputs)
                args = (s["local_features"], s["distill_prototypes"], te["cls_features"], te["distill_prototypes"])
                terms["distill"] = self.distill.chunked(*args, teacher_temp, chunk)
            else:
                terms["distill"] = self.distill(s["local_logits"], te["cls_logits"], teacher_temp)
            total = total + loss.distill_weight * terms["distill"]
        if self.mim is not None:
            if chunk:
                args = (
                    s["masked_patch_features"],
                    s["mim_prototypes"],
                    te["masked_patch_features"],
                    te["mim_prototypes"],
                )
                terms["mim"] = self.mim.chunked(*args, teacher_temp, chunk)
            else:
                terms["mim"] = self.mim(s["masked_patch_logits"], te["masked_patch_logits"], teacher_temp)
            total = total + loss.mim_weight * terms["mim"]
        if loss.tag_weight > 0:
            terms["tag"] = asymmetric_loss(
                student_out["tag_logits"],
                student_out["tag_targets"],
                loss.tag_gamma_neg,
                loss.tag_gamma_pos,
                loss.tag_clip,
            )
            total = total + loss.tag_weight * terms["tag"]
        terms["loss"] = total
        return total, terms
