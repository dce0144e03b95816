"""A checkpoint is data only: one whose pickle would run code is refused by every load path, and
the code never runs (issue: `tipslab eval CHECKPOINT` on a crafted folder ran the attacker's code)."""

import builtins
import contextlib
import io

import pytest
import torch
from test_checkpoint import experiment, training_state

from tipslab.models.checkpoint import CHECKPOINT_FILE, load_state, load_student, read_checkpoint, save_checkpoint
from tipslab.models.errors import DataError
from tipslab.models.official import export_checkpoint
from tipslab.orchestrator.cli import main


class Payload:
    """Unpickling this creates `marker`: the stand-in for an attacker's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def crafted(folder, marker) -> str:
    """A checkpoint folder that looks like ours (a real student, config and tokenizer) with the
    payload hidden among its values."""
    state, _ = training_state(experiment())
    state["bad_rows"] = {"rows_seen": Payload(marker)}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / CHECKPOINT_FILE)
    return str(folder)


def test_the_payload_would_run_if_unpickled_plainly(tmp_path):
    folder = crafted(tmp_path / "ckpt", tmp_path / "marker")  # the test can fail: the payload is live
    torch.load(f"{folder}/{CHECKPOINT_FILE}", weights_only=False)
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("load", [load_state, load_student, lambda d: read_checkpoint(f"{d}/{CHECKPOINT_FILE}", True)])
def test_every_python_load_path_refuses_it_without_running_it(tmp_path, load):
    folder = crafted(tmp_path / "ckpt", tmp_path / "marker")
    with pytest.raises(DataError, match=r"model\.pt: refused: a tipslab checkpoint holds only tensors"):
        load(folder)
    with pytest.raises(DataError):
        export_checkpoint(folder, str(tmp_path / "out"))
    assert not (tmp_path / "marker").exists()


def test_every_command_refuses_it_with_one_line_and_exit_2(tmp_path, home):
    folder = crafted(tmp_path / "ckpt", tmp_path / "marker")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    for argv in (
        ["eval", folder],
        ["embed", folder, str(image), "--out", str(tmp_path / "e.npz")],
        ["checkpoint", "export", folder, str(tmp_path / "out")],
    ):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(argv) == 2, argv
        assert "refused" in err.getvalue() and "Traceback" not in err.getvalue()
    assert not (tmp_path / "marker").exists()


def test_our_own_checkpoints_still_load(tmp_path):
    state, _ = training_state(experiment(), step=7)
    save_checkpoint(tmp_path, state)
    assert load_state(tmp_path)["step"] == 7
