"""L_tag: Tag2Text-style image tagging, a head over the image tokens and the asymmetric loss.

The head is Tag2Text's "image-tag recognition decoder" (after Query2Label): one learned query per tag,
2 layers that cross-attend to the image tokens with 4 heads and have no self-attention, and a
per-class linear output (each tag scores its own query with its own weights). Layers are post-LN as
in the BERT layers Tag2Text uses. Its width is the image tower's (Tag2Text: BERT-base, 768).

Data wiring comes with the tags issue: `batch["tags"]` (multi-hot [B, num_tags] float, the tags
parsed from the caption) is not yet made by the data pipeline, so `loss.tag_weight` stays 0 until then.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


class CrossAttentionLayer(nn.Module):
    """Queries attend to the image tokens, then an MLP; residual + LayerNorm after each (BERT)."""

    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        if width % heads:
            raise ConfigError(f"model.tag_heads: {heads} does not divide the width {width}")
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.norm1 = nn.LayerNorm(width, eps=1e-12)  # BERT's eps
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, width))
        self.norm2 = nn.LayerNorm(width, eps=1e-12)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """queries [B, T, D], tokens [B, N, D] -> [B, T, D]."""

        def split(x):  # [B, L, D] -> [B, heads, L, D / heads]
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(self.q(queries)), split(self.k(tokens)), split(self.v(tokens)))
        x = self.norm1(queries + self.out(attended.transpose(1, 2).flatten(2)))
        return self.norm2(x + self.mlp(x))


class TagHead(nn.Module):
    def __init__(self, width: int, num_tags: int, layers: int = 2, heads: int = 4, mlp_dim: int | None = None):
        super().__init__()
        if num_tags < 1:
            raise ConfigError("model.num_tags must be the tag vocabulary's size (> 0) when loss.tag_weight > 0")
        self.queries = nn.Parameter(torch.randn(num_tags, width) * 0.02)  # Tag2Text's label_embed
        self.layers = nn.ModuleList(CrossAttentionLayer(width, heads, mlp_dim or 4 * width) for _ in range(layers))
        # Per-class linear output (Tag2Text's GroupWiseLinear), with its uniform init.
        bound = 1 / math.sqrt(width)
        self.class_weight = nn.Parameter(torch.empty(num_tags, width).uniform_(-bound, bound))
        self.class_bias = nn.Parameter(torch.empty(num_tags).uniform_(-bound, bound))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """image_tokens [B, N, D] (CLS tokens and patches) -> tag logits [B, num_tags]."""
        x = self.queries.unsqueeze(0).expand(image_tokens.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, image_tokens)
        return (x * self.class_weight).sum(-1) + self.class_bias


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 7.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., ICCV 2021) with Tag2Text's γ- = 7, γ+ = 0, clip 0.05.

    With p = sigmoid(logit): a positive costs -(1 - p)^γ+ log p; a negative costs
    -p_m^γ- log(1 - p_m) with the shifted probability p_m = max(p - clip, 0), so easy negatives
    (p < clip) cost nothing. The focusing weights carry no gradient, as in the reference code.
    Summed over tags and averaged over the batch (the reference sums over the batch as well, which
    would tie the loss's scale to the per-rank batch size).
    """
    logits, targets = logits.float(), targets.float()
    p = torch.sigmoid(logits)
    p_neg = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p
    loss = targets * torch.log(p.clamp(min=eps)) + (1 - targets) * torch.log(p_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad():
            pt = p * targets + p_neg * (1 - targets)
            weight = torch.pow(1 - pt, gamma_pos * targets + gamma_neg * (1 - targets))
        loss = loss * weight
    return -loss.sum(-1).mean()
