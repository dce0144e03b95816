"""train.strategy: fsdp in the Ray Train job: two CPU workers (gloo) shard the student, teacher and
optimizer with FSDP2, checkpoint their shards beside the whole weights, and a rerun resumes from
the shards.

`make soak` (two two-stage runs: about a minute on 2 cores). `make test` covers its parts: FSDP2 on
two gloo processes trains exactly as DDP and its sharded checkpoint restores student, teacher and
optimizer (tests/jobs/train/test_parallel.py); a Ray Train run resumes from its checkpoint on a
rerun (test_trainer.py, on S3); the stages (test_stages.py)."""

import json
import math
from pathlib import Path

import pytest
import torch
from test_trainer import experiment

from tipslab.jobs.config import as_dict
from tipslab.jobs.train.parallel import read_sharded
from tipslab.jobs.train.stages import stage_configs
from tipslab.jobs.train.state import SHARDED_DIR
from tipslab.jobs.train.trace import ROW_TRACE_ENV, state_digest
from tipslab.jobs.train.trainer import build_trainer
from tipslab.models.checkpoint import load_state, load_student, tips_config
from tipslab.models.tips import TIPSStudent

# Two stages: "clip" without MIM (a frozen mask token among the sharded parameters), then "all",
# which starts from the first one's gathered weights (carry_weights) and, at lr 0, keeps them.
STAGES = (
    "[{name: clip, steps: 2, overrides: {loss.mim_weight: 0}},"
    " {name: all, steps: %d, overrides: {train.lr: 0, train.min_lr: 0}}]"
)


def run_config(all_steps: int) -> dict:
    return experiment(
        **{
            "train.num_workers": 2,
            "train.cpus_per_worker": 0.5,
            "train.strategy": "fsdp",
            "train.stages": STAGES % all_steps,
            "train.checkpoint_every": 2,
            "train.log_every": 2,
            "train.probe_every": 4,
            "train.probe_images": 8,
        }
    )


@pytest.mark.soak
def test_fsdp_run_trains_checkpoints_whole_weights_and_a_rerun_resumes_from_its_shards(
    ray_session, home, tmp_path, monkeypatch
):
    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv(ROW_TRACE_ENV, str(trace))  # build_trainer passes it on to the workers
    config = run_config(2)
    result = build_trainer(config, name="fsdp", storage_path=str(home / "ray")).fit()
    history = result.metrics_dataframe
    assert list(history["step"]) == [2, 4] and list(history["train/stage"]) == [0, 1]
    assert history["train/loss"].notna().all() and (history["train/param_norm"] > 0).all()
    assert ((history["train/temperature"] > 0) & (history["train/temperature"] < 1)).all()
    assert "train/mim" in history and history["train/mim"].iloc[-1] > 0  # the second stage's term
    assert 0 <= history["eval/scenes/i2t_r1"].iloc[-1] <= 100  # the probe ran its forwards on both ranks

    # One checkpoint folder: rank 0's model.pt and both ranks' shards, merged by Ray Train.
    folder = Path(result.checkpoint.path)
    names = {p.name for p in (folder / SHARDED_DIR).iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= names
    state = load_state(folder)
    assert state["step"] == 4 and state["stage"] == 1 and state["stage_step"] == 2
    assert state["optimizer"] is None and state["sharded"] == SHARDED_DIR and len(state["rng"]) == 2
    # The whole weights, under the unsharded model's names and shapes: evaluation reads them as ever.
    reference = TIPSStudent(tips_config(config)).state_dict()
    assert {k: v.shape for k, v in state["student"].items()} == {k: v.shape for k, v in reference.items()}
    student, tokenizer, saved = load_student(folder)
    assert saved == as_dict(stage_configs(config)[1][1])  # the stage's config, a plain dict
    assert student.text.log_temperature.ndim == 0
    # The metrics read the sharded parameters whole, as they are after the checkpoint's step.
    norm = torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in student.parameters()]))
    assert history["train/param_norm"].iloc[-1] == pytest.approx(float(norm), rel=1e-5)
    assert history["train/temperature"].iloc[-1] == pytest.approx(float(student.text.temperature.detach()), rel=1e-6)
    # ... and they are the shards' weights.
    shards = read_sharded(str(folder / SHARDED_DIR))
    for key, value in shards["student"].items():
        key = key.replace("parametrizations.log_temperature.original", "log_temperature")
        torch.testing.assert_close(state["student"][key], value.reshape(state["student"][key].shape), rtol=0, atol=0)
    assert set(shards["teacher"]) == set(state["teacher"]) and shards["optimizer"]["state"]
    expected = state_digest(shards["student"], shards["optimizer"])
    # The second stage started from the first one's weights (gathered at the stage's end).
    clip = {s["step"]: s for s in (load_state(c.path) for c, _ in result.best_checkpoints)}[2]
    assert clip["teacher"] is not None and not any(k.startswith("mim_head.") for k in clip["student"])
    assert all(torch.equal(value, state["student"][key]) for key, value in clip["student"].items())
    assert not list(trace.glob("*.json"))  # no resume yet

    # The same (storage_path, name) with a longer second stage: it resumes at step 4 from the shards.
    result = build_trainer(run_config(4), name="fsdp", storage_path=str(home / "ray")).fit()
    events = [json.loads(line) for f in trace.glob("*.json") for line in f.read_text().splitlines()]
    assert len(events) == 2 and {(e["resumed_at"], e["stage"], e["digest"]) for e in events} == {(4, 1, expected)}
    state = load_state(result.checkpoint.path)
    assert state["step"] == 6 and state["stage"] == 1 and state["stage_step"] == 4
    assert list(result.metrics_dataframe["step"])[-1] == 6
    assert math.isfinite(result.metrics_dataframe["train/loss"].iloc[-1])
