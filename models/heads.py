"""DINO/iBOT projection heads: MLP -> bottleneck -> L2 norm -> weight-normalised prototypes."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class PrototypeHead(nn.Module):
    def __init__(self, in_dim: int, hidden: int, bottleneck: int, prototypes: int, norm_last_layer: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.prototypes = weight_norm(nn.Linear(bottleneck, prototypes, bias=False))
        if norm_last_layer:  # every prototype scores the cosine itself: the gain is 1, for good
            gain = self.prototypes.parametrizations.weight.original0
            with torch.no_grad():
                gain.fill_(1.0)
            gain.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck, what the prototype layer scores: the chunked loss
        (loss.chunk_rows) takes these and `self.prototypes.weight` instead of the scores."""
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(self.features(x))
