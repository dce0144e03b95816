"""The paper's model sizes: dimensions and parameter counts of both towers, built on the meta device."""

import pytest
import torch

from tipslab.models.config import SIZES, ModelConfig
from tipslab.models.text import TextTower
from tipslab.models.vision import VisionTower, mlp_kind, swiglu_hidden

# Parameters (millions) of the official towers, vision / text with the 32,000-token vocabulary
# (the counts of the official parameter lists in shared/fixtures/official_tips/manifest.json).
PARAMS_M = {
    "S": (21.6, 33.6),
    "B": (85.7, 109.6),
    "L": (303.2, 183.9),
    "So400m": (412.5, 448.3),
    "g": (1134.8, 389.1),
}
# width, depth, heads, MLP, text depth (PAPER.md)
DIMS = {
    "S": (384, 12, 6, 1536, 12),
    "B": (768, 12, 12, 3072, 12),
    "L": (1024, 24, 16, 4096, 12),
    "So400m": (1152, 27, 16, 4304, 27),
    "g": (1536, 40, 24, 6144, 12),
}


def meta_towers(**fields) -> tuple[VisionTower, TextTower]:
    cfg = ModelConfig(**{"vocab_size": 32000, "image_size": 224, **fields})
    with torch.device("meta"):
        return VisionTower(cfg), TextTower(cfg)


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize("size", sorted(PARAMS_M))
def test_parameter_counts_match_the_official_towers(size):
    vision, text = meta_towers(size=size)
    want_vision, want_text = PARAMS_M[size]
    assert millions(vision) == pytest.approx(want_vision, rel=0.01)
    assert millions(text) == pytest.approx(want_text, rel=0.01)


@pytest.mark.parametrize("size", sorted(DIMS))
def test_dimensions_of_each_size(size):
    width, depth, heads, mlp_dim, text_depth = DIMS[size]
    assert ModelConfig(size=size).dims() == DIMS[size]
    vision, text = meta_towers(size=size)
    assert len(vision.blocks) == depth and len(text.blocks) == text_depth
    assert vision.blocks[0].attn.num_heads == heads and text.blocks[0].attn.num_heads == heads
    assert vision.pos_embed.shape == (1, 1 + 16 * 16, width)  # 16x16 grid at 224 px, + CLS_1
    hidden = swiglu_hidden(mlp_dim) if size == "g" else mlp_dim
    assert vision.blocks[0].mlp.fc2.in_features == hidden  # exact, including So400m's 4304
    assert text.blocks[0].mlp.fc1.out_features == mlp_dim  # the text MLP is ReLU at every size
    assert isinstance(text.blocks[0].mlp.act, torch.nn.ReLU)


def test_g_uses_swiglu_with_the_official_hidden_width():
    assert mlp_kind(ModelConfig(size="g")) == "swiglu"
    assert swiglu_hidden(6144) == 4096  # int(6144 * 2/3), already a multiple of 8
    assert swiglu_hidden(256) == 176  # int(170.67) = 170, rounded up to a multiple of 8
    vision, _ = meta_towers(size="g")
    assert vision.blocks[0].mlp.fc1.weight.shape == (2 * 4096, 1536)
    assert vision.blocks[0].mlp.fc2.weight.shape == (1536, 4096)


def test_any_width_and_depth_can_be_given():
    vision, text = meta_towers(size="S", width=192, depth=3, heads=3, mlp_dim=512, text_depth=2)
    assert vision.width == 192 and len(vision.blocks) == 3 and len(text.blocks) == 2
    assert vision.blocks[0].mlp.fc1.out_features == 512
    assert set(SIZES) >= {"tiny", "small-cpu", "S", "B", "L", "So400m", "g"}
