"""The demo's time breakdown from a trial's MLflow run: known times in, known parts out."""

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tipslab.orchestrator.demo import TrialTime, breakdown, trial_times

T0 = 1_700_000_000_000  # ms


def test_a_trials_startup_training_and_evaluation_come_from_its_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("demo")
    parent = client.create_run(exp, start_time=T0, run_name="parent").info.run_id
    tags = {"mlflow.parentRunId": parent}
    run = client.create_run(exp, start_time=T0, tags=tags, run_name="mim_off-seed0").info.run_id
    params = {"train.log_every": "10", "data.batch_size": "32", "train.cpus_per_worker": "1.0"}
    client.log_batch(run, params=[Param(k, v) for k, v in params.items()])
    # Launched at 0 s; reports at steps 10, 20, 30 at 40, 60, 80 s: 2 s a step, so training began
    # at 20 s (start-up 20 s) and took 60 s; the run ended at 100 s (evaluation 20 s).
    loss = [Metric("train/loss", 5.0 - i, T0 + 1000 * (40 + 20 * i), 10 * (i + 1)) for i in range(3)]
    rate = [Metric("perf/images_per_s", v, T0 + 1000 * (40 + 20 * i), 10 * (i + 1)) for i, v in enumerate([9, 16, 18])]
    client.log_batch(run, metrics=loss + rate)
    client.set_terminated(run, "FINISHED", end_time=T0 + 100_000)
    killed = client.create_run(exp, start_time=T0, tags=tags, run_name="mim_on-seed0").info.run_id
    client.set_terminated(killed, "KILLED", end_time=T0 + 5000)

    [t] = trial_times(client, parent, exp)
    assert (t.name, t.batch_size, t.threads) == ("mim_off-seed0", 32, 1)
    assert (t.startup_s, t.training_s, t.evaluation_s) == pytest.approx((20.0, 60.0, 20.0))
    assert t.images_per_s == pytest.approx(17.0)  # the median after the first window


def test_the_breakdown_accounts_for_every_second_and_the_ratios():
    trials = [TrialTime("a", 20.0, 60.0, 20.0, 17.0, 32, 1), TrialTime("b", 10.0, 50.0, 10.0, 15.0, 32, 1)]
    text = breakdown({"ray_start_s": 5.0, "scenes_s": 30.0}, trials, 3.0, 250.0, {"images_per_s": 20.0})
    lines = text.splitlines()
    assert lines[0] == "where the demo's time went:"
    assert "a: start-up" in lines[3] and lines[3].split()[-3:] == ["20.0", "s", "8.0%"]
    # 5 + 30 + 100 + 70 + 3 = 208 accounted: 42 s elsewhere
    assert "elsewhere" in lines[-4] and lines[-4].split()[-3:] == ["42.0", "s", "16.8%"]
    assert lines[-2] == "wall time / its work (scenes, training, evaluation): 1.47x"  # 250 / (30 + 140)
    assert lines[-1] == (
        "training: 16.0 images/s (batch 32, 1 thread(s)); `tipslab bench step` at the same model, batch and "
        "threads: 20.0 images/s (trainer / bench: 0.80x)"
    )
