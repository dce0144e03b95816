"""The TIPS text tower: a pre-LN transformer encoder of the image tower's width.

ReLU MLP, fixed sinusoidal positions, token embeddings scaled by sqrt(width), final LayerNorm,
mean over non-padding tokens (the TIPS paper and its official code). It also holds the learned
contrastive temperature, as the official text checkpoint does. The numerics follow the official
PyTorch encoder (LayerNorm eps 1e-5, its [sin | cos] position table) so that official weights, mapped
by models/official.py, give the official embeddings.
"""

import math
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .config import ModelConfig
from .vision import mlp_layer, run_blocks


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """[length, width]: sines in the first half, cosines in the second, timescales geometric from
    1 to 10,000 over the width/2 channels (the official text encoder's table; odd widths pad a 0)."""
    n = width // 2
    step = math.log(10000.0) / max(n - 1, 1)
    inv_timescales = torch.exp(torch.arange(n, dtype=torch.float32) * -step)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return nn.functional.pad(table, (0, width % 2))


class TextTower(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        width, _, heads, mlp_dim, text_depth = cfg.dims()
        self.width = width
        self.recompute = False  # train.activation_checkpointing (jobs/train/step.py build_step)
        self.embedding = nn.Embedding(cfg.vocab_size, width)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_text_len, width), persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-5)  # torch's default, which the official encoder keeps
        self.blocks = nn.ModuleList(
            Block(
                width, heads, qkv_bias=True, act_layer=nn.ReLU, norm_layer=norm, mlp_layer=mlp_layer("gelu", mlp_dim)
            )  # plain two-layer MLP; act_layer makes it ReLU
            for _ in range(text_depth)
        )
        self.norm = norm(width)
        nn.init.normal_(self.embedding.weight, std=width**-0.5)
        # The official checkpoint stores the temperature itself (logits = similarity / temperature);
        # we learn its log so it stays positive. models/official.py converts.
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [B, L] int, 0 = padding. Returns [B, width]."""
        valid = tokens != 0
        x = self.embedding(tokens) * math.sqrt(self.width) + self.positions[: tokens.shape[1]]
        # Additive key mask; an all-padding caption attends to itself so that softmax stays finite.
        keep = valid | ~valid.any(dim=1, keepdim=True)
        attn_mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
        attn_mask = attn_mask[:, None, None, :]
        x = self.norm(run_blocks(self.blocks, x, self.recompute, attn_mask=attn_mask))
        weights = valid.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
