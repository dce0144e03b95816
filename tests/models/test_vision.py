"""The image tower: token layout [CLS_1, CLS_2, patches], the register-style CLS_2, masking, resolution."""

import pytest
import torch
import torch.nn.functional as F

from tipslab.models.config import ModelConfig
from tipslab.models.vision import VisionTower

WIDTH = 64  # "tiny"
GRID = 8  # 112 px / patch 14


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_tower(**overrides) -> VisionTower:
    torch.manual_seed(0)
    tower = VisionTower(ModelConfig(size="tiny", **overrides)).eval()
    # Non-trivial values for the tokens that are initialised to (near) zero, so that mixing them up shows.
    with torch.no_grad():
        tower.cls_token.normal_()
        tower.register_token.normal_()
        tower.mask_token.normal_()
    return tower


def first_block_input(tower: VisionTower, pixels, masks=None):
    captured = []
    handle = tower.blocks[0].register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            out = tower(pixels, masks)
    finally:
        handle.remove()
    assert len(captured) == 1
    return captured[0], out


def pixels(b=2, h=112, w=112, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def test_output_layout_and_shapes():
    tower = make_tower()
    out = tower(pixels(b=3))
    assert set(out) == {"cls_web", "cls_synthetic", "patch_tokens"}
    assert out["cls_web"].shape == (3, WIDTH)
    assert out["cls_synthetic"].shape == (3, WIDTH)
    assert out["patch_tokens"].shape == (3, GRID * GRID, WIDTH)
    # the two CLS tokens are different tokens
    assert not torch.allclose(out["cls_web"], out["cls_synthetic"], atol=1e-3)


def test_outputs_are_after_the_final_layernorm():
    tower = make_tower()
    captured = []
    tower.norm.register_forward_hook(lambda _m, _i, o: captured.append(o.detach()))
    with torch.no_grad():
        out = tower(pixels())
    normed = captured[0]
    assert normed.shape == (2, 2 + GRID * GRID, WIDTH)
    torch.testing.assert_close(out["cls_web"], normed[:, 0])
    torch.testing.assert_close(out["cls_synthetic"], normed[:, 1])
    torch.testing.assert_close(out["patch_tokens"], normed[:, 2:])
    # LayerNorm at its initial affine (1, 0): each token has mean 0, variance 1
    tokens = torch.cat([out["cls_web"][:, None], out["cls_synthetic"][:, None], out["patch_tokens"]], 1)
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 2 + GRID * GRID), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.var(-1, unbiased=False), torch.ones(2, 2 + GRID * GRID), atol=1e-3, rtol=0)


def test_first_block_input_layout_cls2_has_no_position_embedding():
    tower = make_tower()
    x = pixels()
    block_in, _ = first_block_input(tower, x)
    assert block_in.shape == (2, 2 + GRID * GRID, WIDTH)
    with torch.no_grad():
        patches = tower.patch_embed(x)
        pos = tower.pos_embed
    # CLS_1 carries pos_embed[:, 0]
    torch.testing.assert_close(block_in[:, 0], (tower.cls_token + pos[:, :1]).detach()[:, 0].expand(2, -1))
    # CLS_2 is exactly the register token: no position embedding added
    assert torch.equal(block_in[:, 1], tower.register_token.detach()[:, 0].expand(2, -1))
    # patches carry pos_embed[:, 1:]
    torch.testing.assert_close(block_in[:, 2:], patches + pos[:, 1:].detach())


def test_changing_cls_position_embedding_moves_cls1_only():
    tower = make_tower()
    x = pixels()
    before, out_before = first_block_input(tower, x)
    delta = torch.randn(WIDTH)
    with torch.no_grad():
        tower.pos_embed[0, 0] += delta
    after, out_after = first_block_input(tower, x)
    torch.testing.assert_close(after[:, 0] - before[:, 0], delta.expand(2, -1), atol=1e-5, rtol=0)
    assert torch.equal(after[:, 1], before[:, 1])  # the register token never sees pos_embed
    assert torch.equal(after[:, 2:], before[:, 2:])
    assert not torch.allclose(out_after["cls_web"], out_before["cls_web"], atol=1e-4)


def test_register_token_drives_cls_synthetic():
    tower = make_tower()
    x = pixels()
    with torch.no_grad():
        a = tower(x)
        tower.register_token.add_(torch.randn(1, 1, WIDTH))
        b = tower(x)
    assert not torch.allclose(a["cls_synthetic"], b["cls_synthetic"], atol=1e-4)


def test_all_false_mask_equals_no_mask():
    tower = make_tower()
    x = pixels()
    with torch.no_grad():
        a = tower(x)
        b = tower(x, torch.zeros(2, GRID * GRID, dtype=torch.bool))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_masked_positions_get_the_mask_token_plus_their_position():
    tower = make_tower()
    x = pixels()
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(2, GRID * GRID, generator=g) < 0.5
    assert 0 < masks.sum() < masks.numel()
    block_in, _ = first_block_input(tower, x, masks)
    with torch.no_grad():
        patches = tower.patch_embed(x)
        pos = tower.pos_embed[0, 1:]
        mask_token = tower.mask_token[0]
    expected = torch.where(masks[..., None], mask_token + pos, patches + pos)
    torch.testing.assert_close(block_in[:, 2:], expected)
    # CLS tokens are untouched by masking
    clean, _ = first_block_input(tower, x)
    assert torch.equal(block_in[:, :2], clean[:, :2])


def test_masked_patch_content_does_not_reach_the_output():
    tower = make_tower()
    x = pixels(b=1)
    masks = torch.zeros(1, GRID * GRID, dtype=torch.bool)
    masks[0, 0] = True  # top-left patch (pixels [0:14, 0:14])
    y = x.clone()
    y[:, :, :14, :14] = torch.rand(1, 3, 14, 14)
    with torch.no_grad():
        a, b = tower(x, masks), tower(y, masks)
        c = tower(y)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    # without the mask the change is visible
    assert not torch.allclose(a["cls_web"], c["cls_web"], atol=1e-5)


def test_masking_keeps_gradient_to_mask_token():
    tower = make_tower()
    masks = torch.zeros(2, GRID * GRID, dtype=torch.bool)
    masks[:, ::3] = True
    probe = torch.randn(WIDTH)  # not .sum(): a LayerNorm output sums to 0 over its features
    out = tower(pixels(), masks)
    (out["cls_web"] @ probe).sum().backward()
    assert tower.mask_token.grad is not None and tower.mask_token.grad.abs().sum() > 0
    # unmasked: the mask token gets no gradient
    tower.zero_grad(set_to_none=True)
    (tower(pixels())["cls_web"] @ probe).sum().backward()
    assert tower.mask_token.grad is None or tower.mask_token.grad.abs().sum() == 0


def test_native_size_uses_pos_embed_unchanged():
    tower = make_tower()
    assert tower.interpolated_pos_embed(GRID, GRID) is tower.pos_embed


def _reference_resample(pos_embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """CLS position kept; the 8x8 grid resized bilinearly with antialias (the official loader's setting)."""
    grid = pos_embed[:, 1:].reshape(1, GRID, GRID, WIDTH).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, WIDTH)], dim=1)


@pytest.mark.parametrize("size,grid", [((56, 56), (4, 4)), ((224, 224), (16, 16)), ((56, 112), (4, 8))])
def test_other_resolutions_interpolate_position_embeddings(size, grid):
    tower = make_tower()
    h, w = size
    gh, gw = grid
    x = pixels(b=2, h=h, w=w)
    block_in, out = first_block_input(tower, x)
    assert out["patch_tokens"].shape == (2, gh * gw, WIDTH)
    assert out["cls_web"].shape == (2, WIDTH) and out["cls_synthetic"].shape == (2, WIDTH)
    with torch.no_grad():
        expected_pos = _reference_resample(tower.pos_embed, gh, gw)
        patches = tower.patch_embed(x)
    torch.testing.assert_close(block_in[:, 2:], patches + expected_pos[:, 1:], atol=1e-5, rtol=1e-5)
    # the CLS position is not interpolated; CLS_2 still has none
    torch.testing.assert_close(block_in[:, 0], (tower.cls_token + tower.pos_embed[:, :1]).detach()[:, 0].expand(2, -1))
    assert torch.equal(block_in[:, 1], tower.register_token.detach()[:, 0].expand(2, -1))


def test_samples_in_a_batch_are_independent():
    tower = make_tower()
    x = pixels(b=3)
    with torch.no_grad():
        full = tower(x)
        single = tower(x[1:2])
    for key in full:
        torch.testing.assert_close(full[key][1:2], single[key], atol=1e-5, rtol=1e-5)


def test_layerscale_starts_at_the_configured_value():
    tower = make_tower(layerscale_init=1.0)  # the official loader's setting
    for block in tower.blocks:
        assert torch.equal(block.ls1.gamma, torch.ones(WIDTH)) and torch.equal(block.ls2.gamma, torch.ones(WIDTH))
    assert torch.equal(make_tower().blocks[0].ls1.gamma, torch.full((WIDTH,), 0.1))


def test_swiglu_mlp_is_silu_of_the_first_half_times_the_second():
    tower = make_tower(mlp="swiglu", mlp_dim=256)
    mlp = tower.blocks[0].mlp
    assert mlp.fc1.weight.shape == (2 * 176, WIDTH) and mlp.fc2.weight.shape == (WIDTH, 176)
    x = torch.randn(3, WIDTH)
    with torch.no_grad():
        first, second = (x @ mlp.fc1.weight.T + mlp.fc1.bias).chunk(2, dim=-1)
        expected = (F.silu(first) * second) @ mlp.fc2.weight.T + mlp.fc2.bias
        torch.testing.assert_close(mlp(x), expected)
    assert tower(pixels())["patch_tokens"].shape == (2, GRID * GRID, WIDTH)


def test_mlp_kind_auto_is_gelu_except_for_g_and_bad_values_name_the_key():
    assert isinstance(make_tower().blocks[0].mlp.act, torch.nn.GELU)
    assert make_tower().blocks[0].mlp.fc1.out_features == 128  # "tiny": the MLP width of the size table
    with pytest.raises(ValueError, match="model.mlp"):
        VisionTower(ModelConfig(size="tiny", mlp="relu"))
