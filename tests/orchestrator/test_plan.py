"""`tipslab plan` reads bench results from a real sqlite MLflow store, and runs nothing."""

import json

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from tipslab.orchestrator.plan import format_plan, plan_summary
from tipslab.orchestrator.spec import load_spec

B14 = REPO / "ablations" / "base" / "tips_b14.yaml"


def spec(tmp_path, data_cpus: int = 48):
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"name: p\nbase: {B14}\noverrides: {{train.steps: 100, data.cpus: {data_cpus}}}\n"
        "variants: {a: {}, b: {loss.mim_weight: 0}}\n"
        "metrics: [{key: eval/scenes/i2t_r1}]\n"
        "resources: {workers_per_trial: 8, gpus_per_worker: 1, cpus_per_worker: 4}\n"
    )
    return path


def bench_run(client, exp, bench, size, kind, metrics, params=None):
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
    for key, value in (params or {}).items():
        client.log_param(run, key, value)
    client.set_terminated(run, "FINISHED")
    return run


EAGER_128 = {"batch_size": 128, "compile": False}


def test_estimate_from_the_latest_matching_bench_runs(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    bench_run(client, exp, "step", "B", "gpu", {"bench/step/images_per_s": 100.0}, EAGER_128)  # older: not used
    step = bench_run(client, exp, "step", "B", "gpu", {"bench/step/images_per_s": 400.0}, EAGER_128)
    # newer, but at another batch size or compiled: never this eager batch-128 trial's figure
    bench_run(client, exp, "step", "B", "gpu", {"bench/step/images_per_s": 571.0}, {"batch_size": 256, "compile": True})
    bench_run(client, exp, "step", "B", "gpu", {"bench/step/images_per_s": 551.0}, {"batch_size": 128, "compile": True})
    bench_run(client, exp, "step", "B", "cpu", {"bench/step/images_per_s": 5.0}, EAGER_128)  # other device kind
    bench_run(client, exp, "step", "L", "gpu", {"bench/step/images_per_s": 90.0}, EAGER_128)  # other size
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
    assert (
        "no bench result for model size B on gpu at batch 128 per worker, eager in MLflow experiment 'tipslab-bench'"
    ) in text


LOSSES = REPO / "ablations" / "tips_losses.yaml"


def test_mini_is_estimated_from_cpu_bench_results_in_minutes_and_cpu_hours(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    bench_run(
        client, exp, "step", "tiny", "gpu", {"bench/step/images_per_s": 5000.0}
    )  # a GPU figure: not for CPU trials
    step = bench_run(
        client, exp, "step", "tiny", "cpu", {"bench/step/images_per_s": 64.0}, {"batch_size": 32, "compile": False}
    )
    client.log_param(step, "threads", "1")
    trial = bench_run(client, exp, "trial", "tiny", "cpu", {"bench/trial/launch_to_first_step_s": 30.0})
    views_bench(client, exp, 100.0, image_size=112, local_crops=2, local_crop_size=56)  # feeds 64 images/s
    summary = plan_summary(load_spec(LOSSES, size="mini"), uri)
    assert (summary["size"], summary["num_trials"]) == (
        "mini",
        9,
    )  # the paper's 3 rows x 3 seeds: mini drops the rows of ours
    assert [t["name"] for t in summary["trials"][:3]] == ["clip-seed0", "clip-seed1", "clip-seed2"]
    # per trial: 1500 steps x 32 images / 64 images/s = 750 s, + 30 s launch; 9 trials; 2 CPUs each
    assert [t["hours"] for t in summary["trials"]] == [pytest.approx(780 / 3600)] * 9
    est = summary["estimate"]
    assert est["trial_hours"] == pytest.approx(7020 / 3600) and est["cpu_hours"] == pytest.approx(2 * 7020 / 3600)
    assert est["gpu_hours"] == 0 and summary["resources"]["cpus_per_trial"] == 2
    assert (est["basis"][0]["step_run"], est["basis"][0]["trial_run"], est["basis"][0]["device_kind"]) == (
        step,
        trial,
        "cpu",
    )
    text = format_plan(summary)
    assert "plan of tips-losses (mini): 9 trial(s)" in text and "minutes" in text.splitlines()[1]
    assert "clip-seed0" in text and " 13.0" in text  # minutes per trial
    assert "estimate: 117.0 trial-minutes (1.95 h), 3.90 CPU-hours at 2 CPUs per trial, no GPU" in text
    assert "GPU-hours" not in text and "note:" not in text
    json.dumps(summary)


def test_mini_without_a_cpu_bench_result_says_so(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    bench_run(client, exp, "step", "tiny", "gpu", {"bench/step/images_per_s": 5000.0})
    text = format_plan(plan_summary(load_spec(LOSSES, size="mini"), uri))
    assert (
        "no bench result for model size tiny on cpu at batch 32 per worker, eager in MLflow experiment "
        "'tipslab-bench': run `tipslab bench step --sizes tiny --batch-size 32 --device cpu`"
    ) in text
    assert "estimate: unknown (no matching bench results)" in text


def test_a_cpu_bench_with_other_threads_than_the_worker_has_is_noted(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    step = bench_run(
        client, exp, "step", "tiny", "cpu", {"bench/step/images_per_s": 64.0}, {"batch_size": 32, "compile": False}
    )
    client.log_param(step, "threads", "2")
    text = format_plan(plan_summary(load_spec(LOSSES, size="mini"), uri))
    assert "the step bench ran with 2 torch threads, a trial's worker has 1 CPU(s)" in text
    assert "no trial bench result" in text and "trial-minutes" in text


def test_a_bench_of_another_batch_size_or_compile_setting_is_not_used(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    bench_run(client, exp, "step", "B", "gpu", {"bench/step/images_per_s": 571.0}, {"batch_size": 256, "compile": True})
    bench_run(client, exp, "step", "B", "gpu", {"bench/step/images_per_s": 551.0}, {"batch_size": 128, "compile": True})
    summary = plan_summary(load_spec(spec(tmp_path)), uri)
    assert [t["hours"] for t in summary["trials"]] == [None, None] and summary["estimate"]["gpu_hours"] is None
    text = format_plan(summary)
    assert (
        "no bench result for model size B on gpu at batch 128 per worker, eager in MLflow experiment "
        "'tipslab-bench' (only at batch 128, compiled; batch 256, compiled, which is not this trial's setting): "
        "run `tipslab bench step --sizes B --batch-size 128`"
    ) in text
    assert "estimate: unknown" in text
    # the compiled trial takes the compiled batch-128 figure: 100 steps x 128 / 551 images/s
    compiled = plan_summary(load_spec(spec(tmp_path), overrides=["train.compile=true"]), uri)
    assert compiled["trials"][0]["hours"] == pytest.approx(100 * 128 / 551 / 3600)


B14_VIEWS = {"bench/data/image_size": 224, "bench/data/local_crops": 8, "bench/data/local_crop_size": 98}


def views_bench(client, exp, per_cpu: float, augment: str = "dinov2", **views) -> str:
    metrics = {**B14_VIEWS, **{f"bench/data/{k}": v for k, v in views.items()}}
    return bench_run(
        client,
        exp,
        "data",
        "none",
        "cpu",
        {**metrics, "bench/data/raydata_images_per_s_per_cpu": per_cpu},
        {"augment": augment},
    )


def test_data_cpus_that_cannot_feed_the_gpus_are_a_warning_with_the_numbers(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tipslab-bench")
    step = bench_run(client, exp, "step", "B", "gpu", {"bench/step/images_per_s": 400.0}, EAGER_128)
    data = views_bench(client, exp, 80.0)
    views_bench(client, exp, 500.0, local_crops=2, local_crop_size=96)  # other views (bench data's defaults)
    starved = plan_summary(load_spec(spec(tmp_path, data_cpus=1)), uri)
    # 8 workers x 400 images/s = 3200 images/s taken; 1 CPU x 80 images/s made; 3200 / 80 = 40 CPUs needed
    [feed] = starved["data"]["feeds"]
    assert (feed["consumed_images_per_s"], feed["supplied_images_per_s"], feed["needed_cpus"]) == (3200, 80, 40)
    assert feed["feeds"] is False and feed["data_run"] == data
    text = format_plan(starved)
    assert (
        f"WARNING: data.cpus=1 cannot feed the workers: 1 CPU(s) x 80.0 images/s of views per CPU (bench run {data})"
        f" = 80 images/s, but 8 worker(s) x 400.0 images/s (bench run {step}) = 3200 images/s: set data.cpus to at "
        "least 40"
    ) in text
    # the estimate runs at the data's rate: 80 images/s over 8 workers, 10 a worker: 100 x 128 / 10 s
    assert starved["trials"][0]["hours"] == pytest.approx(100 * 128 / 10 / 3600)
    fed = plan_summary(load_spec(spec(tmp_path, data_cpus=40)), uri)
    assert fed["warnings"] == [] and fed["data"]["feeds"][0]["feeds"] is True
    assert fed["trials"][0]["hours"] == pytest.approx(100 * 128 / 400 / 3600)
    assert "data: 40 CPU(s) x 80.0 images/s of views per CPU" in format_plan(fed)


def test_without_a_data_bench_the_feed_is_unknown_but_one_cpu_for_eight_gpus_is_still_flagged(tmp_path, home):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("tipslab-bench")
    text = format_plan(plan_summary(load_spec(spec(tmp_path, data_cpus=1)), uri))
    assert "WARNING: data.cpus=1 CPU(s) of Ray Data for 8 GPU workers (fewer than one a GPU)" in text
    assert (
        "no data bench result for these views (224 px, 8 local crops of 98 px, augment dinov2): whether data.cpus=1 "
        "can feed the workers is unknown; run `tipslab bench data --image-size 224 --local-crops 8 "
        "--local-crop-size 98 --augment dinov2`"
    ) in text
    assert "WARNING" not in format_plan(plan_summary(load_spec(spec(tmp_path, data_cpus=48)), uri))
