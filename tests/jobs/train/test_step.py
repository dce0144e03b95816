"""The plain-PyTorch TIPS step and its schedules (no Ray)."""

import numpy as np
import pytest
import torch

from tipslab.jobs.config import TrainConfig
from tipslab.jobs.train.step import Schedules, apply_schedules, param_groups
from tipslab.models.config import LossConfig
from tipslab.models.errors import ConfigError
from tipslab.models.schedules import cosine_schedule

TRAIN = TrainConfig(
    steps=10,
    lr=1e-3,
    min_lr=1e-5,
    warmup_steps=2,
    weight_decay=0.04,
    weight_decay_end=0.4,
    teacher_momentum=0.992,
    teacher_momentum_end=1.0,
    teacher_temp_warmup_steps=4,
    teacher_temp_end=0.07,
)


def test_schedules_are_arrays_indexed_by_step():
    s = Schedules(TRAIN, LossConfig(teacher_temp=0.04))
    for array in (s.lr, s.weight_decay, s.momentum, s.teacher_temp):
        assert len(array) == 10
    assert s.lr[0] == 0 and s.lr[2] == pytest.approx(1e-3) and s.lr[-1] < 1e-4
    assert s.weight_decay[0] == pytest.approx(0.04) and np.all(np.diff(s.weight_decay) > 0)
    assert s.teacher_temp[0] == pytest.approx(0.04) and s.teacher_temp[4:].tolist() == [0.07] * 6


@pytest.mark.parametrize("steps, lr_warm, temp_warm", [(70_000, 7_000, 21_000), (2_000, 200, 600), (7, 1, 2)])
def test_warmups_given_as_fractions_scale_with_the_stage(steps, lr_warm, temp_warm):
    """DINOv2's shape (lr over 10%, teacher temperature over 30% of training) at any length."""
    train = TrainConfig(
        steps=steps,
        lr=1e-3,
        warmup_steps=0,
        warmup_fraction=0.1,
        teacher_temp_warmup_steps=0,
        teacher_temp_warmup_fraction=0.3,
        teacher_temp_end=0.07,
    )
    assert (train.lr_warmup(), train.teacher_temp_warmup()) == (lr_warm, temp_warm)
    s = Schedules(train, LossConfig(teacher_temp=0.04))
    assert s.lr[0] == 0 and s.lr[lr_warm] == pytest.approx(1e-3) and s.lr.max() == pytest.approx(1e-3)
    assert np.all(np.diff(s.lr[: lr_warm + 1]) > 0) and np.all(np.diff(s.lr[lr_warm:]) <= 0)
    assert s.teacher_temp[0] == pytest.approx(0.04)
    assert s.teacher_temp[temp_warm - 2] < 0.07 and np.allclose(s.teacher_temp[temp_warm - 1 :], 0.07)


def test_warmups_given_as_steps_are_as_before():
    """The tiny, smoke and mini configs give steps: the same schedules as before fractions existed."""
    train = TrainConfig(steps=1500, lr=0.002, min_lr=1e-5, warmup_steps=15, teacher_temp_warmup_steps=30)
    assert (train.lr_warmup(), train.teacher_temp_warmup()) == (15, 30)
    s = Schedules(train, LossConfig(teacher_temp=0.04))
    assert s.lr.tolist() == cosine_schedule(0.002, 1e-5, 1500, 15).tolist()
    assert s.teacher_temp[:30].tolist() == np.linspace(0.04, 0.07, 30).tolist()
    assert (TrainConfig(steps=10, warmup_steps=15).lr_warmup(), TrainConfig(steps=10).teacher_temp_warmup()) == (10, 10)


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"warmup_fraction": 0.1},
            r"^train\.warmup_fraction: 0\.1 and train\.warmup_steps: 15 both set the warm-up; give one "
            r"\(train\.warmup_steps=0 to use the fraction, or train\.warmup_fraction=0\)$",
        ),
        ({"teacher_temp_warmup_fraction": 0.3}, r"^train\.teacher_temp_warmup_fraction: 0\.3 and train\.teacher_temp_"),
        (
            {"warmup_steps": 0, "warmup_fraction": 1.5},
            r"^train\.warmup_fraction: 1\.5 is out of range: must be in \[0, 1\]$",
        ),
        ({"teacher_temp_warmup_steps": 0, "teacher_temp_warmup_fraction": -0.1}, r"fraction: -0\.1 is out of range"),
        ({"warmup_steps": -3}, r"^train\.warmup_steps: -3 is out of range: must be in \[0, 100000000\]$"),
    ],
)
def test_a_bad_warmup_is_one_error_naming_its_key(fields, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**fields)


def test_schedules_reach_the_optimizer_and_spare_norms_and_tokens():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(param_groups(model, 0.04), lr=1.0)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [(4, 3)]  # biases and norms get no weight decay
    s = Schedules(TRAIN, LossConfig(teacher_temp=0.04))
    apply_schedules(opt, s, 7)
    assert decay["lr"] == no_decay["lr"] == s.lr[7]
    assert decay["weight_decay"] == s.weight_decay[7] and no_decay["weight_decay"] == 0.0


def tiny_setup(*overrides: str):
    from conftest import REPO

    from tipslab.jobs.bench.step import synthetic_batch
    from tipslab.jobs.train.step import build_step
    from tipslab.orchestrator.config import load_experiment, to_dict

    exp = to_dict(load_experiment(REPO / "ablations" / "base" / "tips_tiny.yaml", list(overrides)))
    return build_step(exp, "cpu", seed=0), synthetic_batch(exp, 4)


def test_activation_checkpointing_recomputes_each_block_and_changes_no_value(home):
    from tipslab.jobs.train.step import tips_step

    runs = {}
    for recompute in (False, True):
        parts, batch = tiny_setup(f"train.activation_checkpointing={str(recompute).lower()}")
        assert parts.student.vision.recompute is parts.student.text.recompute is recompute
        calls = []  # whether gradients were on, at each start of a tower's first block

        def started(module, args, seen=calls):
            seen.append(torch.is_grad_enabled())

        for tower in (parts.student.vision, parts.student.text, parts.teacher.vision):
            tower.blocks[0].register_forward_pre_hook(started)
        values = tips_step(parts, batch, teacher_temp=0.04, momentum=0.9, step=1)
        runs[recompute] = (values, dict(parts.student.named_parameters()), calls)
    (plain, plain_params, plain_calls), (recomputed, params, calls) = runs[False], runs[True]
    # every student forward (gradients on) ran its first block again in the backward; the teacher's
    # (no gradients) once
    assert len(calls) == len(plain_calls) + sum(plain_calls) and sum(plain_calls) >= 2
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=0, atol=1e-6)
    for name, p in plain_params.items():  # the step's gradients through AdamW: the same weights after it
        torch.testing.assert_close(params[name], p, rtol=0, atol=1e-6)


def test_the_compile_mode_is_checked_and_reaches_torch_compile(home, monkeypatch):
    with pytest.raises(ConfigError, match="train.compile_mode"):
        TrainConfig(compile_mode="fastest")
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: modes.append(kw.get("mode")) or fn)
    parts, _ = tiny_setup()
    parts.compile("max-autotune")
    # the student's forward (through its wrapper), the teacher and the objective
    assert modes == ["max-autotune"] * 3


def test_one_step_returns_every_term_as_a_device_scalar_and_moves_the_teacher(home):
    from tipslab.jobs.train.step import tips_step

    parts, batch = tiny_setup()
    teacher = parts.teacher
    before = teacher.vision.pos_embed.clone()
    marks = []
    values = tips_step(parts, batch, teacher_temp=0.04, momentum=0.9, step=0, marks=marks.append)
    assert set(values) == {"clip_web", "clip_synthetic", "clip", "distill", "mim", "loss", "grad_norm"}
    assert all(torch.is_tensor(v) and v.ndim == 0 and not v.requires_grad for v in values.values())
    assert values["grad_norm"] > 0 and torch.isfinite(values["loss"])
    assert marks == ["student_fwd", "teacher_fwd", "losses", "backward", "optimizer", "ema"]
    assert not torch.equal(teacher.vision.pos_embed, before)


def test_the_watch_names_the_first_non_finite_step_and_term(home):
    from tipslab.jobs.train.step import NonFiniteLossError, tips_step

    parts, batch = tiny_setup()
    student, watch = parts.student, parts.watch
    kw = {"teacher_temp": 0.04, "momentum": 0.9}
    for step in range(7):
        tips_step(parts, batch, step=step, **kw)
    watch.check()  # seven finite steps: nothing to say
    with torch.no_grad():
        student.text.log_temperature.fill_(float("nan"))  # the contrastive terms go first
    for step in range(7, 9):
        tips_step(parts, batch, step=step, **kw)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 7: term 'clip_web' = nan"):
        watch.check()


def test_the_optimizer_state_the_loop_checkpoints_is_plain_data(home, tmp_path):
    """Scheduled learning rates are plain floats, so that a checkpoint reads back as data only; one
    written before (numpy scalars in it) still reads."""
    import numpy as np

    from tipslab.models.checkpoint import load_state, save_checkpoint

    parts, batch = tiny_setup()
    parts.step(batch, 3, 3)
    groups = parts.optimizer.state_dict()["param_groups"]
    assert all(type(g["lr"]) is float and type(g["weight_decay"]) is float for g in groups)
    save_checkpoint(tmp_path / "new", {"optimizer": parts.optimizer.state_dict()})
    assert load_state(tmp_path / "new")["optimizer"]["param_groups"][0]["lr"] == groups[0]["lr"]
    old = parts.optimizer.state_dict()
    old["param_groups"][0]["lr"] = np.float64(0.5)
    save_checkpoint(tmp_path / "old", {"optimizer": old})
    assert load_state(tmp_path / "old")["optimizer"]["param_groups"][0]["lr"] == 0.5
