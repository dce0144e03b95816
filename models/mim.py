"""L_mim: iBOT-style masked image modelling against the EMA teacher's patch prototypes.

The student sees the masked image; for every masked patch its prototype scores are matched to the
teacher's (centred, sharpened) scores of the same patch in the clean image. The centre moves to the
mean over every rank's masked patches: the sums and the counts are both all-reduced, so a patch
weighs the same whichever rank masked it and however many that rank masked. With Sinkhorn-Knopp
centring (loss.centering) the prototypes are balanced over every rank's masked patches alike.
"""

import torch

from .distill import PrototypeTargetsLoss, cross_entropy_to_targets
from .prototype_loss import prototype_cross_entropy


class MIMLoss(PrototypeTargetsLoss):
    def forward(
        self, student_patch_logits: torch.Tensor, teacher_patch_logits: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """Both [M, K]: the masked patches of the whole batch, in the same order."""
        # The centre update (or Sinkhorn-Knopp) is a collective: a rank with no masked patch still
        # takes part (or the others would wait for it forever), contributing nothing.
        targets = self.targets(teacher_patch_logits, teacher_temp)
        if student_patch_logits.shape[0] == 0:
            return student_patch_logits.sum() * 0.0  # zero, with a graph for backward()
        return cross_entropy_to_targets(student_patch_logits, targets, self.student_temp)

    def chunked(
        self,
        student_features: torch.Tensor,
        prototypes: torch.Tensor,
        teacher_features: torch.Tensor,
        teacher_prototypes: torch.Tensor,
        teacher_temp: float,
        chunk_rows: int,
    ) -> torch.Tensor:
        """The same loss from the heads' features of the masked patches before their prototype layer
        (both [M, D], in the same order) and that layer's weights [K, D], `chunk_rows` rows at a
        time (models/prototype_loss.py): no [M, K] tensor is held, save Sinkhorn-Knopp's targets.
        With M = 0 it is 0, with zero gradients for the features and the weight."""
        targets = self.targets.chunked(teacher_features, teacher_prototypes, teacher_temp)  # a collective
        return prototype_cross_entropy(student_features, prototypes, targets, self.student_temp, chunk_rows)


def masked_tokens(tokens: torch.Tensor, masks: torch.Tensor, count: int) -> torch.Tensor:
    """`tokens[masks]` ([B*count, D], row by row, positions ascending) for masks [B, N] with exactly
    `count` True per row, without a host synchronisation: boolean indexing must wait for the device
    to count the Trues, this gathers positions a stable sort puts first."""
    order = torch.argsort(masks.to(torch.uint8), dim=1, descending=True, stable=True)[:, :count]
    return tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])).flatten(0, 1)
