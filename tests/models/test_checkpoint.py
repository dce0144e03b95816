"""Checkpoints: one self-contained model.pt, written atomically, loadable into an eval-mode student."""

import copy

import numpy as np
import pytest
import torch

from tipslab.models import checkpoint as ckpt
from tipslab.models.checkpoint import CHECKPOINT_FILE, load_state, load_student, save_checkpoint, tips_config
from tipslab.models.objective import TIPSObjective
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent
from tipslab.models.tokenizer import HashTokenizer
from tipslab.orchestrator.config import schema, to_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def experiment(**model_and_loss) -> dict:
    config = to_dict(schema())
    config["model"].update(head_prototypes=32, head_hidden=64, head_bottleneck=16)
    for key, value in model_and_loss.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def training_state(config: dict, step=7) -> tuple[dict, TIPSStudent]:
    torch.manual_seed(0)
    cfg = tips_config(config)
    student = TIPSStudent(cfg)
    with torch.no_grad():  # weights that differ from a fresh init
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    objective = TIPSObjective(cfg)
    teacher = EMATeacher(student) if objective.needs_teacher else None
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    tokenizer = HashTokenizer(config["model"]["vocab_size"], config["model"]["max_text_len"])
    state = {
        "student": student.state_dict(),
        "teacher": teacher.state_dict() if teacher else None,
        "objective": objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "config": config,
        "tokenizer": tokenizer.state(),
    }
    return state, student


def test_save_then_load_student_round_trips(tmp_path):
    config = experiment()
    state, student = training_state(config)
    path = save_checkpoint(tmp_path / "a" / "b", state)  # parents are created
    assert path == tmp_path / "a" / "b" / CHECKPOINT_FILE and path.is_file()

    loaded, tokenizer, loaded_config = load_student(tmp_path / "a" / "b")
    assert isinstance(loaded, TIPSStudent) and not loaded.training
    assert loaded_config == config
    original = student.state_dict()
    again = loaded.state_dict()
    assert set(again) == set(original)
    for k in original:
        assert torch.equal(again[k], original[k]), k
    assert tokenizer.state() == state["tokenizer"]
    texts = ["a red cube", "two green spheres"]
    assert np.array_equal(tokenizer.encode(texts), HashTokenizer(4096, 64).encode(texts))
    # same function, not just the same numbers in the dict
    student.eval()
    x = torch.rand(2, 3, 112, 112)
    tokens = torch.from_numpy(tokenizer.encode(texts))
    with torch.no_grad():
        torch.testing.assert_close(loaded.vision(x)["cls_web"], student.vision(x)["cls_web"])
        torch.testing.assert_close(loaded.encode_text(tokens), student.encode_text(tokens))


def test_load_state_returns_everything_saved(tmp_path):
    config = experiment()
    state, _ = training_state(config, step=42)
    save_checkpoint(tmp_path, state)
    loaded = load_state(tmp_path)
    assert set(loaded) == set(state)
    assert loaded["step"] == 42 and loaded["config"] == config
    assert set(loaded["objective"]) == {"distill.targets.center", "mim.targets.center"}
    for k, v in state["teacher"].items():
        assert torch.equal(loaded["teacher"][k], v), k


def test_config_drives_the_rebuilt_student(tmp_path):
    config = experiment(
        model__head_prototypes=24, model__init_temperature=0.2, loss__mim_weight=0.0, loss__caption_mode="web"
    )
    state, _ = training_state(config)
    save_checkpoint(tmp_path, state)
    loaded, _, loaded_config = load_student(tmp_path)
    assert loaded.mim_head is None and loaded.distill_head is not None
    assert loaded.cfg.model.head_prototypes == 24 and loaded.cfg.loss.caption_mode == "web"
    assert loaded_config["loss"]["mim_weight"] == 0.0
    assert loaded.text.temperature.item() != pytest.approx(0.07)  # the saved (perturbed) value, not a default


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    config = experiment()
    first, _ = training_state(config, step=1)
    save_checkpoint(tmp_path, first)
    second, _ = training_state(config, step=2)
    save_checkpoint(tmp_path, second)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]
    assert load_state(tmp_path)["step"] == 2


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = experiment()
    good, _ = training_state(config, step=1)
    save_checkpoint(tmp_path, good)

    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # leave a truncated, corrupt file behind, then die
            fh.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash_midway)
    newer, _ = training_state(config, step=2)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, newer)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert load_state(tmp_path)["step"] == 1  # model.pt was never touched


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing / CHECKPOINT_FILE)):
        load_student(missing)
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_FILE):
        load_state(tmp_path)


def test_unknown_config_key_is_rejected(tmp_path):
    config = copy.deepcopy(experiment())
    config["model"]["no_such_key"] = 1
    with pytest.raises(Exception, match="no_such_key"):
        tips_config(config)


def test_a_student_weight_that_is_not_finite_is_refused_by_every_load_path(tmp_path, home, capsys):
    from PIL import Image

    from tipslab.models.errors import DataError
    from tipslab.models.official import export_checkpoint
    from tipslab.orchestrator.cli import main

    state, _ = training_state(experiment())
    name = "vision.blocks.1.mlp.fc2.weight"
    state["student"][name] = state["student"][name].clone()
    state["student"][name][0, 5] = float("nan")
    save_checkpoint(tmp_path / "ckpt", state)
    expected = rf"ckpt/model.pt: the student's weight '{name}' holds non-finite values \(NaN or Inf\)"
    with pytest.raises(DataError, match=expected):
        load_student(tmp_path / "ckpt")
    with pytest.raises(DataError, match=expected):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out_vision.npz").exists()
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    for argv in (
        ["eval", str(tmp_path / "ckpt")],  # refused by the driver, before Ray starts
        ["embed", str(tmp_path / "ckpt"), str(tmp_path / "x.png"), "--out", str(tmp_path / "e.npz")],
        ["checkpoint", "export", str(tmp_path / "ckpt"), str(tmp_path / "out")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("tipslab: error: ") and len(err.splitlines()) == 1, err
        assert f"weight '{name}' holds non-finite values" in err and "ckpt" in err
    state["student"][name][0, 5] = float("inf")  # Inf too; and a finite checkpoint loads
    save_checkpoint(tmp_path / "ckpt", state)
    with pytest.raises(DataError, match=expected):
        load_student(tmp_path / "ckpt")
    state["student"][name][0, 5] = 0.0
    save_checkpoint(tmp_path / "ckpt", state)
    assert not load_student(tmp_path / "ckpt")[0].training
