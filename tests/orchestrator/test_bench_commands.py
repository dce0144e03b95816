"""`tipslab bench`: each command runs at tiny size on CPU, prints figures, and logs one MLflow run
to `tipslab-bench` with the tags and metric names that `tipslab plan` reads."""

import json

import pytest
from conftest import tiny_overrides
from mlflow.tracking import MlflowClient

from tipslab.jobs.bench import COMPONENTS as STEP_COMPONENTS
from tipslab.orchestrator.bench_commands import EXPERIMENT
from tipslab.orchestrator.bench_data_command import print_bench_data
from tipslab.orchestrator.bench_runs import TRIAL_EXPERIMENT, startup_table
from tipslab.orchestrator.cli import main
from tipslab.orchestrator.runtime import tracking_uri


def bench_runs(bench: str) -> list:
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([exp.experiment_id], f"tags.`tipslab.bench` = '{bench}'")


def run_json(capsys, argv: list[str]):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_step_prints_figures_and_logs_them(home, capsys):
    [r] = run_json(capsys, ["bench", "step", "--batch-size", "4", "--repeats", "2", "--threads", "1", "--json"])
    assert r["model_size"] == "tiny" and r["device_kind"] == "cpu" and r["images_per_s"] > 0 and 0 < r["mfu"] < 1
    [run] = bench_runs("step")
    assert run.info.run_id == r["mlflow_run_id"] and run.info.status == "FINISHED"
    tags, metrics = run.data.tags, run.data.metrics
    assert (tags["tipslab.model_size"], tags["tipslab.device_kind"], tags["tipslab.device"]) == (
        "tiny",
        "cpu",
        r["device"],
    )
    for key in (
        "images_per_s",
        "mfu",
        "step_s",
        "flops_per_image",
        "student_saved_mb",
        *(f"{c}_s" for c in STEP_COMPONENTS),
    ):
        assert metrics[f"bench/step/{key}"] == pytest.approx(r[key])
    assert run.data.params["batch_size"] == "4"
    assert (run.data.params["activation_checkpointing"], run.data.params["chunk_rows"]) == ("False", "0")


def test_bench_flops_prints_the_table_of_each_size(home, capsys):
    rows = run_json(capsys, ["bench", "flops", "--sizes", "tiny", "B", "--json"])
    assert [r["model_size"] for r in rows] == ["tiny", "B"]
    b = rows[1]
    assert (b["image_size"], b["local_crops"], b["local_crop_size"], b["captions"], b["batch_size"]) == (
        224,
        8,
        98,
        2,
        128,
    )
    assert b["flops_per_image"] == pytest.approx(sum(c["forward"] + c["backward"] for c in b["components"].values()))
    assert 600e9 < b["flops_per_image"] < 650e9
    assert main(["bench", "flops", "--sizes", "B"]) == 0
    assert "student local crops" in capsys.readouterr().out


def test_bench_loss_prints_the_plain_and_the_chunked_row(home, capsys):
    """`bench loss` on tiny sizes: a row for each side with its peak memory, time and loss, and the
    ratios; --json gives the same figures; a size below 1 is refused naming its flag. Logs nothing."""
    argv = ["bench", "loss", "--rows", "50", "--prototypes", "96", "--dim", "8", "--chunk-rows", "16"]
    argv += ["--repeats", "1", "--threads", "1", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "96 prototypes, 50 rows of 8 features" in out and "fp32" in out
    plain = next(line for line in out.splitlines() if line.strip().startswith("plain "))
    chunked = next(line for line in out.splitlines() if line.strip().startswith("chunked (16 rows)"))
    assert len(plain.split()) == 4 and len(chunked.split()) == 6  # label, peak MB, seconds, loss
    assert "plain / chunked peak memory:" in out and "chunked / plain time:" in out
    r = run_json(capsys, [*argv, "--json"])
    assert (r["rows"], r["prototypes"], r["dim"], r["chunk_rows"]) == (50, 96, 8, 16)
    assert r["chunked_peak_mb"] < r["plain_peak_mb"] and r["chunked_loss"] == pytest.approx(r["plain_loss"], rel=1e-6)
    assert main(["bench", "loss", "--rows", "0"]) == 2
    assert "--rows: must be at least 1" in capsys.readouterr().err


def test_bench_step_user_mistakes_exit_2(home, capsys):
    assert main(["bench", "step", "model.size=huge", "--json"]) == 2
    assert "model.size" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main(["bench", "step", "--device", "cuda"]) == 2
        assert "--device cuda" in capsys.readouterr().err


def test_bench_data_repeats_at_least_once_before_scenes_or_ray(home, capsys):
    assert main(["bench", "data", "--repeats", "0"]) == 2
    assert "--repeats: must be at least 1, got 0" in capsys.readouterr().err
    assert not (home / "data").exists()  # no scenes made


def test_bench_trial_repeats_at_least_once_and_reports_the_median_repeat(home, capsys):
    from tipslab.orchestrator.bench_runs import median_index

    assert main(["bench", "trial", "--repeats", "0"]) == 2
    assert "--repeats: must be at least 1, got 0" in capsys.readouterr().err
    assert [median_index(v) for v in ([1.3], [1.6, 1.4], [1.6, 1.4, 1.5], [2.0, 1.1, 1.7, 1.2])] == [0, 0, 2, 2]


# Three trials (the bare floor twice, tipslab's once): `make soak`. The figures' parts are tested
# here: the repeats and median (above), the start-up phases (tests/jobs/train/test_startup.py).
@pytest.mark.soak
def test_bench_trial_measures_launch_to_first_step(ray_session, home, capsys):
    r = run_json(capsys, ["bench", "trial", *tiny_overrides(**{"train.steps": 2, "train.log_every": 1}), "--json"])
    assert 0 < r["launch_to_first_step_s"] < r["trial_total_s"]
    # Ray's floor, a bare TorchTrainer in a one-trial Tuner, measured before and after in the same run.
    assert len(r["bare_runs_s"]) == 2 and 0 < r["bare_launch_to_first_report_s"]
    assert r["bare_launch_to_first_report_s"] == pytest.approx(sum(r["bare_runs_s"]) / 2, abs=0.01)
    assert r["ratio_to_bare"] == pytest.approx(r["launch_to_first_step_s"] / r["bare_launch_to_first_report_s"])
    assert r["repeats"] == 1 and r["ratios"] == [pytest.approx(r["ratio_to_bare"], abs=1e-3)]
    # Where the worker's start-up went (jobs/train/startup.py): every phase, within launch to first step.
    assert set(r["phases"]) == {"workers", "worker_setup", "model", "first_batch", "first_step"}
    assert all(v >= 0 for v in r["phases"].values())
    assert sum(r["phases"].values()) <= r["launch_to_first_step_s"] + 0.5
    assert r["phases"]["worker_setup"] > 0 and r["phases"]["first_batch"] > 0
    assert set(r["bare_phases"]) == {"workers", "worker_setup"} and all(v > 0 for v in r["bare_phases"].values())
    [run] = bench_runs("trial")
    assert run.data.metrics["bench/trial/ratio_to_bare"] == pytest.approx(r["ratio_to_bare"])
    assert run.data.metrics["bench/trial/launch_to_first_step_s"] == pytest.approx(r["launch_to_first_step_s"])
    assert (run.data.tags["tipslab.model_size"], run.data.tags["tipslab.device_kind"]) == ("tiny", "cpu")
    # The trial went through the sweep's own path: a parent and a trial run in their own experiment.
    client = MlflowClient(tracking_uri())
    trial_runs = client.search_runs([client.get_experiment_by_name(TRIAL_EXPERIMENT).experiment_id])
    assert {t.data.tags["tipslab.role"] for t in trial_runs} == {"sweep", "trial"}


def test_bench_data_measures_both_pipelines_on_scenes(ray_session, home, capsys, tmp_path):
    r = run_json(
        capsys, ["bench", "data", "--scenes", "24", "--batch-size", "4", "--cpus", "1", "--local-crops", "1", "--json"]
    )
    assert r["raydata_images_per_s"] > 0 and r["dataloader_images_per_s"] > 0 and r["image_size"] == 224
    # 3 epochs of 24 rows are a stage whose views run in tasks (auto): no start-up of their own
    assert r["views"] == "tasks" and r["raydata_actors_ready_s"] == 0 and r["ready_ratio"] == pytest.approx(r["ratio"])
    assert r["shards"] == str(home / "data" / "bench-scenes-224" / "train")
    [run] = bench_runs("data")
    for key in ("raydata_images_per_s", "dataloader_images_per_s"):
        assert run.data.metrics[f"bench/data/{key}"] == pytest.approx(r[key])
    assert run.data.tags["tipslab.device_kind"] == "cpu"
    assert main(["bench", "data", "--shards", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_step_jobs_run_elsewhere_and_their_results_are_imported(home, capsys, tmp_path):
    # The path of a GPU box without MLflow: job files written here, run by infra/bench-step-gpu.sh
    # there (here: on this CPU), the result files logged back here, where `tipslab plan` reads them.
    import os
    import subprocess
    import sys

    from conftest import REPO

    from tipslab.orchestrator.plan import Setting, bench_estimate

    jobs = tmp_path / "jobs"
    assert (
        main(
            [
                "bench",
                "step",
                "--batch-size",
                "2",
                "--repeats",
                "1",
                "--threads",
                "1",
                "--device",
                "cpu",
                "--write-jobs",
                str(jobs),
                "train.activation_checkpointing=true",
            ]
        )
        == 0
    )
    [job] = sorted(jobs.iterdir())
    assert json.loads(job.read_text())["exp"]["model"]["size"] == "tiny"
    env = {
        **os.environ,
        "OUT": str(tmp_path / "results"),
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "infra" / "bench-step-gpu.sh"), str(job)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tiny batch 2 eager, activation checkpointing:" in proc.stdout and "exit 0" in proc.stdout
    capsys.readouterr()
    [r] = run_json(capsys, ["bench", "step", "--import", str(tmp_path / "results" / job.name), "--json"])
    [run] = bench_runs("step")  # writing the jobs logged nothing
    assert run.data.params["activation_checkpointing"] == "True"  # the job's setting came back with its result
    assert run.info.run_id == r["mlflow_run_id"] and run.data.metrics["bench/step/images_per_s"] == pytest.approx(
        r["images_per_s"]
    )
    est = bench_estimate(tracking_uri(), Setting("tiny", "cpu", 2, False))  # the imported batch and compile
    assert est.step_run == r["mlflow_run_id"]
    assert main(["bench", "step", "--import", str(job)]) == 2  # a job file is not a result
    assert "not a step benchmark result" in capsys.readouterr().err


def test_bench_scenes_and_ingest_print_rates_and_log_them(home, capsys):
    scenes = run_json(capsys, ["bench", "scenes", "--n", "3", "--size", "48", "--json"])
    assert (scenes["size"], scenes["scenes"]) == (48, 3)
    assert scenes["render_per_cpu_s"] > 0 and scenes["row_per_cpu_s"] > 0
    [run] = bench_runs("scenes")
    assert run.data.metrics["bench/scenes/row_per_cpu_s"] == pytest.approx(scenes["row_per_cpu_s"])
    ingest = run_json(capsys, ["bench", "ingest", "--n", "8", "--size", "32", "--tars", "2", "--json"])
    assert set(ingest["formats"]) == {"webdataset", "csv", "tsv", "jsonl", "coco"}
    assert all(r["rows"] == 8 and r["rows_per_s"] > 0 for r in ingest["formats"].values()), ingest
    [run] = bench_runs("ingest")
    assert run.data.metrics["bench/ingest/csv_rows_per_s"] == pytest.approx(ingest["formats"]["csv"]["rows_per_s"])


# A Ray Train run beside the plain loop: `make soak`, with the bench trial.
@pytest.mark.soak
def test_bench_overhead_times_the_loop_step_with_and_without_ray_train(ray_session, home, capsys):
    r = run_json(
        capsys,
        ["bench", "overhead", *tiny_overrides(**{"data.batch_size": 4}), "--steps", "3", "--warmup", "1", "--json"],
    )
    assert (
        r["plain_step_s"] > 0
        and r["ray_step_s"] > 0
        and r["ratio"] == pytest.approx(r["ray_step_s"] / r["plain_step_s"])
    )
    [run] = bench_runs("overhead")
    assert run.data.metrics["bench/overhead/ratio"] == pytest.approx(r["ratio"])


def test_the_startup_table_puts_each_phase_beside_the_floors():
    table = startup_table(
        {"phases": {"workers": 4.0, "worker_setup": 6.25, "first_batch": 2.0}, "bare_phases": {"workers": 3.5}}
    ).splitlines()
    assert table[0].split() == ["phase", "tipslab", "s", "floor", "s"]
    assert [line.split()[:3] for line in table[1:]] == [
        ["workers", "4.0", "3.5"],
        ["worker_setup", "6.2", "-"],
        ["first_batch", "2.0", "-"],
    ]


def test_bench_data_speaks_of_the_views_actors_only_where_they_ran(capsys):
    result = {
        "image_size": 224,
        "local_crops": 2,
        "local_crop_size": 96,
        "augment": "dinov2",
        "epochs": 50,
        "raydata_images_per_s": 440.0,
        "raydata_images_per_s_per_cpu": 220.0,
        "raydata_startup_s": 5.5,
        "dataloader_images_per_s": 400.0,
        "dataloader_images_per_s_per_cpu": 200.0,
        "dataloader_startup_s": 0.3,
        "ratio": 1.1,
        "raydata_actors_ready_s": 5.0,
        "raydata_ready_images_per_s": 480.0,
        "ready_ratio": 1.2,
    }
    print_bench_data({**result, "views": "actors"}, 2, "shards/train")
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("50 epochs, Ray Data's views in actors:")
    assert out[1].split()[:4] == ["Ray", "Data", "440.0", "images/s"] and "start-up 5.5 s" in out[1]
    assert out[3] == (
        "  Ray Data / DataLoader: 1.10; its views actors ready after 5.0 s, "
        "then 480.0 images/s (1.20 of the DataLoader's)"
    )
    print_bench_data({**result, "views": "tasks", "raydata_actors_ready_s": 0.0, "ready_ratio": 1.1}, 2, "s")
    assert capsys.readouterr().out.splitlines()[3] == "  Ray Data / DataLoader: 1.10"
    print_bench_data({**result, "views": "tasks", "ratios": [1.2, 0.9, 1.1], "ready_ratio": 1.1}, 2, "s")
    line = capsys.readouterr().out.splitlines()[3]
    assert line == "  Ray Data / DataLoader: 1.10 (median of 3 pairs: 1.20, 0.90, 1.10)"
