"""`tipslab plan` reads bench results from a real sqlite MLflow store, and runs nothing."""

import json

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from tipslab.orchestrator.plan import format_plan, plan_summary
from tipslab.orchestrator.spec import load_spec

B14 = REPO / "ablations" / "base" / "tips_b14.yaml"


def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"name: p\nbase: {B14}\noverrides: {{train.steps: 100}}\nvariants: {{a: {{}}, b: {{loss.mim_weight: 0}}}}\n"
        "metrics: [{key: eval/scenes/i2t_r1}]\n"
        "resources: {workers_per_trial: 8, gpus_per_worker: 1, cpus_per_worker: 4}\n"
    )
    return path


def bench_run(client, exp, bench, size, kind, metrics):
    run = client.create_run(
        exp,
        tags={
            "tipslab.bench": bench,
            "tipslab.model_size": size,
            "tipslab.device_kind": kind,
            "tipslab.device": "NVIDIA H100",
        },
    ).info.run_id
    for key, value in metrics.items():
        client.log_metric(run, key, value)
    client.set_terminated(run, "FINISHED")
    return run


def test_estimate_from_the_latest_matching_bench_runs(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    bench_run(client, exp, "step", "B", "gpu", {"bench/step/images_per_s": 100.0})  # older: not used
    step = bench_run(client, exp, "step", "B", "gpu", {"bench/step/images_per_s": 400.0})
    bench_run(client, exp, "step", "B", "cpu", {"bench/step/images_per_s": 5.0})  # other device kind
    bench_run(client, exp, "step", "L", "gpu", {"bench/step/images_per_s": 90.0})  # other size
    trial = bench_run(client, exp, "trial", "B", "gpu", {"bench/trial/launch_to_first_step_s": 60.0})
    summary = plan_summary(load_spec(spec(tmp_path)), uri)
    # per trial: 100 steps x 128 images per worker / 400 images/s per worker = 32 s, + 60 s launch
    assert [t["hours"] for t in summary["trials"]] == [pytest.approx(92 / 3600)] * 2
    assert summary["estimate"]["trial_hours"] == pytest.approx(184 / 3600)
    assert summary["estimate"]["gpu_hours"] == pytest.approx(8 * 184 / 3600)  # 8 GPUs per trial
    basis = summary["estimate"]["basis"][0]
    assert (basis["step_run"], basis["trial_run"], basis["images_per_s"]) == (step, trial, 400.0)
    assert summary["resources"]["gpus_per_trial"] == 8 and summary["num_trials"] == 2
    assert "0.409 GPU-hours" in format_plan(summary)
    json.dumps(summary)  # the --json form


def test_no_bench_results_is_said_and_no_store_is_created(tmp_path, home):
    missing = tmp_path / "none.db"
    summary = plan_summary(load_spec(spec(tmp_path)), f"sqlite:///{missing}")
    assert summary["estimate"]["gpu_hours"] is None and not missing.exists()
    assert "no bench results" in format_plan(summary)
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(uri).create_experiment("other")
    text = format_plan(plan_summary(load_spec(spec(tmp_path)), uri))
    assert "no bench result for model size B on gpu in MLflow experiment 'tipslab-bench'" in text


LOSSES = REPO / "ablations" / "tips_losses.yaml"


def test_mini_is_estimated_from_cpu_bench_results_in_minutes_and_cpu_hours(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    bench_run(
        client, exp, "step", "tiny", "gpu", {"bench/step/images_per_s": 5000.0}
    )  # a GPU figure: not for CPU trials
    step = bench_run(client, exp, "step", "tiny", "cpu", {"bench/step/images_per_s": 64.0})
    client.log_param(step, "threads", "1")
    trial = bench_run(client, exp, "trial", "tiny", "cpu", {"bench/trial/launch_to_first_step_s": 30.0})
    summary = plan_summary(load_spec(LOSSES, size="mini"), uri)
    assert (summary["size"], summary["num_trials"]) == ("mini", 18)  # 6 rows (3 of them ours:) x 3 seeds
    assert [t["name"] for t in summary["trials"][:3]] == ["clip-seed0", "clip-seed1", "clip-seed2"]
    # per trial: 1500 steps x 32 images / 64 images/s = 750 s, + 30 s launch; 18 trials; 2 CPUs each
    assert [t["hours"] for t in summary["trials"]] == [pytest.approx(780 / 3600)] * 18
    est = summary["estimate"]
    assert est["trial_hours"] == pytest.approx(14040 / 3600) and est["cpu_hours"] == pytest.approx(2 * 14040 / 3600)
    assert est["gpu_hours"] == 0 and summary["resources"]["cpus_per_trial"] == 2
    assert (est["basis"][0]["step_run"], est["basis"][0]["trial_run"], est["basis"][0]["device_kind"]) == (
        step,
        trial,
        "cpu",
    )
    text = format_plan(summary)
    assert "plan of tips-losses (mini): 18 trial(s)" in text and "minutes" in text.splitlines()[1]
    assert "clip-seed0" in text and " 13.0" in text  # minutes per trial
    assert "estimate: 234.0 trial-minutes (3.90 h), 7.80 CPU-hours at 2 CPUs per trial, no GPU" in text
    assert "GPU-hours" not in text and "note:" not in text
    json.dumps(summary)


def test_mini_without_a_cpu_bench_result_says_so(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    bench_run(client, exp, "step", "tiny", "gpu", {"bench/step/images_per_s": 5000.0})
    text = format_plan(plan_summary(load_spec(LOSSES, size="mini"), uri))
    assert (
        "no bench result for model size tiny on cpu in MLflow experiment 'tipslab-bench': "
        "run `tipslab bench step --sizes tiny --device cpu`"
    ) in text
    assert "estimate: unknown (no matching bench results)" in text


def test_a_cpu_bench_with_other_threads_than_the_worker_has_is_noted(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    step = bench_run(client, exp, "step", "tiny", "cpu", {"bench/step/images_per_s": 64.0})
    client.log_param(step, "threads", "2")
    text = format_plan(plan_summary(load_spec(LOSSES, size="mini"), uri))
    assert "the step bench ran with 2 torch threads, a trial's worker has 1 CPU(s)" in text
    assert "no trial bench result" in text and "trial-minutes" in text
