"""The TIPS image tower: a DINOv2-style ViT with two CLS tokens.

Token order is `[CLS_1, CLS_2, patches]` as in the official encoder: CLS_1 (aligned with the web
caption) carries a position embedding; CLS_2 (aligned with the synthetic caption) is inserted after
the position embeddings are added, like a DINOv2 register token, so it has none.

Parameter names follow the official PyTorch layout (timm's Block names are DINOv2's), except
`register_token` (official: `register_tokens`) and the SwiGLU MLP's `fc1`/`fc2` (official: `w12`/`w3`);
models/official.py maps between the two.
"""

from functools import partial

import torch
from timm.layers import Mlp, PatchEmbed, SwiGLUPacked, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import MLP_KINDS, ModelConfig, mlp_kind, swiglu_hidden  # noqa: F401  (MLP_KINDS: ModelConfig checks model.mlp)


def mlp_layer(kind: str, mlp_dim: int):
    """An `mlp_layer` for timm's Block with an exact hidden width (Block's float `mlp_ratio` can round
    4304 down to 4303)."""

    def build(in_features, hidden_features, act_layer, **kwargs):
        if kind == "swiglu":  # fc1 holds both halves (official `w12`): silu(first) * second
            return SwiGLUPacked(in_features, 2 * swiglu_hidden(mlp_dim), **kwargs)
        return Mlp(in_features, mlp_dim, act_layer=act_layer, **kwargs)

    return build


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, recompute: bool, **kwargs) -> torch.Tensor:
    """`x` through the transformer `blocks` in order. With `recompute` (train.activation_checkpointing)
    and gradients on, each block keeps only its input for the backward, which runs its forward again
    (torch's non-reentrant checkpoint: the same values and gradients)."""
    for block in blocks:
        if recompute and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False, **kwargs)
        else:
            x = block(x, **kwargs)
    return x


class VisionTower(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.recompute = False  # train.activation_checkpointing (jobs/train/step.py build_step)
        width, depth, heads, mlp_dim, _ = cfg.dims()
        self.mlp = mlp_kind(cfg)
        self.patch_size = cfg.patch_size
        self.grid = cfg.image_size // cfg.patch_size
        self.width = width
        self.pos_interpolation = cfg.pos_interpolation
        self.patch_embed = PatchEmbed(
            img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=width, strict_img_size=False
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_token = nn.Parameter(torch.zeros(1, 1, width))  # CLS_2, no position embedding
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, width))
        self.mask_token = nn.Parameter(torch.zeros(1, width))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(
                width,
                heads,
                qkv_bias=True,
                init_values=cfg.layerscale_init,
                norm_layer=norm,
                mlp_layer=mlp_layer(self.mlp, mlp_dim),
            )
            for _ in range(depth)
        )
        self.norm = norm(width)
        trunc_normal_(self.pos_embed, std=0.02)
        for p in (self.cls_token, self.register_token):
            nn.init.normal_(p, std=1e-6)

    def interpolated_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w patch grid. The CLS_1 entry is kept; the grid is resized
        like the official loader does it (bilinear, antialias, no offset), so 448 px matches exactly."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        return resample_abs_pos_embed(
            self.pos_embed,
            new_size=[h, w],
            old_size=[self.grid, self.grid],
            num_prefix_tokens=1,
            interpolation=self.pos_interpolation,
            antialias=True,
        )

    def forward(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        """pixels: [B, 3, H, W], float in [0, 1] or uint8 in [0, 255] (the training views travel as
        uint8, a quarter of the bytes, and become floats here, on the device); masks: optional bool
        [B, num_patches], True = masked.

        Returns `cls_web` and `cls_synthetic` [B, width] and `patch_tokens` [B, N, width], all after
        the final LayerNorm.
        """
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 255.0
        b, _, h, w = pixels.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        x = self.patch_embed(pixels)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.interpolated_pos_embed(gh, gw)
        x = torch.cat([x[:, :1], self.register_token.expand(b, -1, -1), x[:, 1:]], dim=1)
        x = self.norm(run_blocks(self.blocks, x, self.recompute))
        return {"cls_web": x[:, 0], "cls_synthetic": x[:, 1], "patch_tokens": x[:, 2:]}
