"""The text tower: padding is invisible, sqrt(width) scaling, sinusoidal positions, masked mean, temperature."""

import math

import numpy as np
import pytest
import torch

from tipslab.models.config import ModelConfig
from tipslab.models.text import TextTower, sinusoidal_positions

WIDTH = 64  # "tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_tower(**overrides) -> TextTower:
    torch.manual_seed(0)
    return TextTower(ModelConfig(**{"size": "tiny", **overrides})).eval()


def tokens(b=3, length=7, seed=1, vocab=4096):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (b, length), generator=g)


def test_output_shape_and_depth():
    tower = make_tower()
    assert len(tower.blocks) == 2  # tiny: the text depth follows the image tower
    assert tower(tokens()).shape == (3, WIDTH)
    # 12 text layers for the paper's sizes, 27 for So400m (not built: too big for a unit test)
    assert ModelConfig(size="B").dims()[4] == 12 and ModelConfig(size="S").dims()[4] == 12
    assert ModelConfig(size="So400m").dims()[4] == 27
    assert len(TextTower(ModelConfig(size="tiny", width=96, heads=2, mlp_dim=96, text_depth=3)).blocks) == 3


def test_appending_padding_does_not_change_the_embedding():
    tower = make_tower()
    t = tokens(b=3, length=6)
    padded = torch.cat([t, torch.zeros(3, 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a, b = tower(t), tower(padded)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_captions_of_different_lengths_in_one_batch_match_their_unpadded_selves():
    tower = make_tower()
    t = tokens(b=2, length=9)
    batch = t.clone()
    batch[0, 4:] = 0  # caption 0 has 4 tokens, caption 1 has 9
    with torch.no_grad():
        out = tower(batch)
        short = tower(t[:1, :4])
        long = tower(t[1:2])
    torch.testing.assert_close(out[0], short[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], long[0], atol=1e-5, rtol=1e-5)


def test_padding_embedding_row_is_never_used():
    tower = make_tower()
    t = tokens(b=2, length=5)
    t[:, 3:] = 0
    with torch.no_grad():
        a = tower(t)
        tower.embedding.weight[0] = 100 * torch.randn(WIDTH)
        b = tower(t)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_all_padding_caption_is_finite_and_does_not_disturb_others():
    tower = make_tower()
    t = tokens(b=3, length=8)
    t[1] = 0
    with torch.no_grad():
        out = tower(t)
        alone = tower(t[[0, 2]])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[[0, 2]], alone, atol=1e-5, rtol=1e-5)
    # gradients are finite too
    tower.train()
    probe = torch.randn(WIDTH)
    (tower(t) @ probe).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in tower.parameters() if p.grad is not None)


def test_embedding_scaled_by_sqrt_width_plus_sinusoidal_positions():
    tower = make_tower()
    t = tokens(b=2, length=5)
    captured = []
    tower.blocks[0].register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().clone()))
    with torch.no_grad():
        tower(t)
    expected = tower.embedding.weight.detach()[t] * math.sqrt(WIDTH) + sinusoidal_positions(5, WIDTH)
    torch.testing.assert_close(captured[0], expected)
    assert tower.positions.shape == (64, WIDTH)  # max_text_len rows, not a parameter
    assert "positions" not in dict(tower.named_parameters())


def test_sinusoidal_positions_values():
    """The official encoder's table: [sin | cos], timescales 10000^(i / (width/2 - 1))."""
    table = sinusoidal_positions(10, 8).numpy()
    pos = np.arange(10)[:, None]
    i = np.arange(4)[None, :]
    angle = pos / 10000 ** (i / 3)
    np.testing.assert_allclose(table[:, :4], np.sin(angle), atol=1e-6)
    np.testing.assert_allclose(table[:, 4:], np.cos(angle), atol=1e-6)
    np.testing.assert_allclose(table[0], [0] * 4 + [1] * 4, atol=0)
    # the slowest channel spans 1 / 10000 radians per position
    np.testing.assert_allclose(table[1, 3], np.sin(1e-4), rtol=1e-5)
    # an odd width pads one zero channel
    odd = sinusoidal_positions(5, 9).numpy()
    assert odd.shape == (5, 9) and np.all(odd[:, -1] == 0)
    np.testing.assert_allclose(odd[:, :8], sinusoidal_positions(5, 8).numpy())


def test_output_is_mean_of_final_normed_non_padding_tokens():
    tower = make_tower()
    t = tokens(b=2, length=6)
    t[0, 2:] = 0
    captured = []
    tower.norm.register_forward_hook(lambda _m, _i, o: captured.append(o.detach()))
    with torch.no_grad():
        out = tower(t)
    normed = captured[0]
    torch.testing.assert_close(out[0], normed[0, :2].mean(0))
    torch.testing.assert_close(out[1], normed[1].mean(0))


def test_token_order_matters():
    tower = make_tower()
    t = tokens(b=1, length=6)
    with torch.no_grad():
        a, b = tower(t), tower(t.flip(1))
    assert not torch.allclose(a, b, atol=1e-4)


def test_temperature_is_exp_of_a_learned_log():
    tower = make_tower(init_temperature=0.05)
    torch.testing.assert_close(tower.temperature, torch.tensor(0.05))
    with torch.no_grad():
        tower.log_temperature.fill_(math.log(0.2))
    torch.testing.assert_close(tower.temperature, torch.tensor(0.2))
    assert tower.log_temperature.requires_grad
    (2 * tower.temperature).backward()
    torch.testing.assert_close(tower.log_temperature.grad, torch.tensor(2 * 0.2))
    assert "log_temperature" in tower.state_dict()
