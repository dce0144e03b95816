"""End to end, on the real local Ray instance and real MLflow stores: sweeps that die, resume and grow.

procedural scenes -> Ray Data -> Ray Train (CPU, gloo) -> evaluation -> Ray Tune -> MLflow -> table.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray
from conftest import REPO, tiny_overrides
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer

from tipslab.dashboards.store import load_sweep
from tipslab.dashboards.table import render
from tipslab.orchestrator.errors import UserError
from tipslab.orchestrator.runtime import tracking_uri
from tipslab.orchestrator.spec import load_spec
from tipslab.orchestrator.sweep import concurrency, run_sweep
from tipslab.orchestrator.trial import eval_cpus

SMOKE = REPO / "ablations" / "smoke.yaml"
TINY = REPO / "ablations" / "base" / "tips_tiny.yaml"
# Fake credentials planted in the environment of every process of the sweep; none may reach MLflow.
PLANTED = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY0000001",
    "AWS_SECRET_ACCESS_KEY": "plantedSecret/abc+XYZ0123456789",
    "AWS_SESSION_TOKEN": "planted-session-token-0123456789",
}
STEPS = {"train.steps": 4, "data.scenes_train": 32, "data.scenes_probe": 16, "eval.probes": "[retrieval,segmentation]"}


def wait_for(condition, what: str, deadline_s: float = 1800, every_s: float = 1.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback (sqlite backend, artifacts proxied to a local folder)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server.url
    finally:
        server.stop()


def spec_text(variants: dict) -> str:
    rows = "".join(f"  {name}: {json.dumps(overrides)}\n" for name, overrides in variants.items())
    return (
        f"name: resume-e2e\nbase: {TINY}\nvariants:\n{rows}baseline: a\nseeds: [0, 1]\n"
        "metrics:\n  - {key: eval/scenes/i2t_r1, header: I→T}\n  - {key: eval/scenes/seg_miou, header: mIoU}\n"
    )


def trial_runs(client, status=None, experiment="resume-e2e"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`tipslab.role` = 'trial'", max_results=1000) if exp else []
    return [r for r in runs if status is None or r.info.status == status]


def tipslab(*args, env, log, cwd=REPO, **kw):
    """The CLI as a subprocess; its output goes to a file (a full pipe would block it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tipslab.orchestrator.cli", *args],
        env=env,
        cwd=cwd,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        **kw,
    )


# The longest test of this file: 6 tiny trials plus one killed mid-way, one Ray instance throughout:
# `make soak` (5 minutes on 2 shared cores). `make test` keeps what it proves at lower cost: resume's
# bookkeeping on a real store (test_tracking.py), two drivers on one sweep (test_tracking_faults.py),
# no planted secret in anything logged (test_secrets.py); the chaos test kills a driver in `make soak`.
@pytest.mark.soak
def test_killed_sweep_resumes_then_grows_and_logs_no_secret(ray_session, mlflow_server, tmp_path, monkeypatch):
    import ray

    home = tmp_path / "home"
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text({"a": {"loss.mim_weight": 0}, "b": {"loss.mim_weight": 0.2}}))
    overrides = tiny_overrides(**STEPS)
    ours = {"TIPSLAB_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_server, **PLANTED}
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # the session's Ray instance
    client = MlflowClient(mlflow_server)

    # 1. The driver dies (SIGKILL to its whole process group) with one run finished and one RUNNING.
    driver = tipslab("sweep", str(spec), *overrides, env=env, log=tmp_path / "driver.log", start_new_session=True)

    def mid_sweep():
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        return trial_runs(client, "FINISHED") and trial_runs(client, "RUNNING")

    try:
        wait_for(mid_sweep, "one finished and one running trial")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished = trial_runs(client, "FINISHED")
    orphans = trial_runs(client, "RUNNING")
    assert len(finished) == 1 and len(orphans) == 1

    # 2. Resume: the finished run is kept, the orphan is closed, only the three missing trials run;
    # the orphan's trial goes on in its run (its Ray Train run folder is the same).
    plan = load_spec(spec, overrides=overrides)
    result = run_sweep(plan, resume=True)
    assert (result.kept, result.closed, result.ran, result.failed) == (1, 1, 3, [])
    assert client.get_run(orphans[0].info.run_id).info.status == "FINISHED"
    done = trial_runs(client, "FINISHED")
    assert sorted(r.info.run_name for r in done) == ["a-seed0", "a-seed1", "b-seed0", "b-seed1"]
    assert orphans[0].info.run_id in {r.info.run_id for r in done}
    assert trial_runs(client, "RUNNING") == []
    assert finished[0].info.run_id in {r.info.run_id for r in done}
    hashes = {t.name: t.config_hash for t in plan.trials}
    manifest = json.loads((home / "data" / "scenes" / "train" / "manifest.json").read_text())
    for run in done:
        assert run.data.tags["tipslab.config_hash"] == hashes[run.info.run_name]
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert {"eval/scenes/i2t_r1", "eval/scenes/seg_miou", "perf/launch_to_first_report_s"} <= set(run.data.metrics)
        assert run.data.params["loss.mim_weight"] == str(0.2 * (run.data.tags["tipslab.variant"] == "b"))
        assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [manifest["content_hash"][:36]]
        assert run.data.tags["tipslab.data_hash"] == manifest["content_hash"]
        assert {"config.json", "eval_results.json", "features.npz"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
        assert run.data.tags["tipslab.checkpoint"]

    # 3. A third variant, resumed through the command line: only its two runs train.
    spec.write_text(
        spec_text({"a": {"loss.mim_weight": 0}, "b": {"loss.mim_weight": 0.2}, "c": {"loss.mim_weight": 0.4}})
    )
    grow = tipslab("sweep", str(spec), *overrides, "--resume", env=env, log=tmp_path / "grow.log")
    grow.wait(timeout=1800)
    out = (tmp_path / "grow.log").read_text()
    assert grow.returncode == 0, out[-3000:]
    assert "resume: kept 4 finished run(s), closed 0 left RUNNING, ran 2" in out
    after = trial_runs(client, "FINISHED")
    assert {r.info.run_id for r in done} <= {r.info.run_id for r in after}
    assert sorted(r.info.run_name for r in after if r.info.run_id not in {d.info.run_id for d in done}) == [
        "c-seed0",
        "c-seed1",
    ]
    assert len(trial_runs(client)) == 6 and trial_runs(client, "RUNNING") == []  # all finished, none killed

    # 4. A new process in an empty folder rebuilds the table from the tracking server alone.
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    table = tipslab(
        "table",
        "resume-e2e",
        "--format",
        "csv",
        env={"PATH": env["PATH"], "HOME": env.get("HOME", "/"), "MLFLOW_TRACKING_URI": mlflow_server},
        log=tmp_path / "table.csv",
        cwd=empty,
    )
    table.wait(timeout=300)
    csv_text = (tmp_path / "table.csv").read_text()
    assert table.returncode == 0, csv_text
    lines = csv_text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant,"))
    rows = {line.split(",")[0]: line.split(",") for line in lines[header + 1 :] if line}
    assert set(rows) == {"a (baseline)", "b", "c"} and all(r[3] == "2" for r in rows.values())  # n = 2 seeds
    assert os.listdir(empty) == []

    # 5. No planted credential anywhere in what was logged: params, tags, metric names, inputs, artifacts.
    logged = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            logged += [run.info.run_name, json.dumps(run.data.params), json.dumps(run.data.tags), *run.data.metrics]
            logged += [str(d.dataset) for d in (run.inputs.dataset_inputs if run.inputs else [])]
            local = client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / run.info.run_id))
            for folder, _, files in os.walk(local):
                logged += [open(os.path.join(folder, f), "rb").read().decode("latin-1") for f in files]
    text = "\n".join(logged)
    assert len(text) > 10000  # the scan did read the configs and results
    for name, value in PLANTED.items():
        assert value not in text, name


@pytest.fixture(scope="module")
def learned(ray_session, tmp_path_factory):
    """One run of the smoke ablation's MIM row at its full smoke length (200 steps): about 125 s on
    2 cores, so the tests that read it (does training learn?) run under `make soak`, outside the
    20-minute `make test`; the resume end-to-end test runs the same code path in `make test`."""
    root = tmp_path_factory.mktemp("learn")
    spec = root / "spec.yaml"
    spec.write_text(
        f"name: learn\nbase: {TINY}\nvariants: {{mim_on: {{loss.mim_weight: 0.2}}}}\n"
        "overrides: {eval.probes: [retrieval, segmentation]}\n"
        "metrics: [{key: eval/scenes/i2t_r1}, {key: eval/scenes/t2i_r1}, {key: eval/scenes/seg_miou}]\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIPSLAB_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = run_sweep(load_spec(spec))
        client = MlflowClient(tracking_uri())
        yield (
            result,
            client,
            client.get_run(
                next(
                    iter(
                        client.search_runs(
                            [client.get_experiment_by_name("learn").experiment_id], "tags.`tipslab.role` = 'trial'"
                        )
                    )
                ).info.run_id
            ),
        )


@pytest.mark.soak
def test_training_loss_fell(learned):
    result, client, run = learned
    assert result.failed == [] and run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert history[-1].step == 200 and len(history) == 200 // 5
    first, last = history[0].value, history[-1].value
    assert last < first - 0.3, (first, last)
    assert "train/mim" in run.data.metrics


@pytest.mark.soak
def test_retrieval_is_above_chance(learned):
    _, _, run = learned
    chance = 100.0 / 256  # R@1 of a random ranking over the 256 probe-test captions
    assert run.data.metrics["eval/scenes/i2t_r1"] > 3 * chance
    assert run.data.metrics["eval/scenes/t2i_r1"] > 3 * chance


@pytest.mark.soak
def test_segmentation_beats_the_constant_prediction(learned):
    # Background covers most pixels of a scene: predicting it everywhere already scores about 14
    # mIoU over the 6 classes. The probe on the trained features must do clearly better.
    import torch

    from tipslab.jobs.eval.evalsets.scenes import CLASSES, read_split
    from tipslab.jobs.eval.probes.segmentation import IGNORE, mean_iou

    _, _, run = learned
    params = run.data.params
    split, _ = read_split(params["data.root"], "probe_test", int(params["model.image_size"]), "synthetic_caption")
    labels = torch.from_numpy(np.asarray(split.segmentation))
    classes, counts = labels[labels != IGNORE].unique(return_counts=True)
    constant = mean_iou(torch.full_like(labels, int(classes[counts.argmax()])), labels, len(CLASSES))
    assert 10 < constant < 20, constant
    assert constant + 3 < run.data.metrics["eval/scenes/seg_miou"] <= 100, constant


@pytest.mark.soak
def test_table_from_the_sqlite_store_alone(learned):
    result, _, _ = learned
    table = render(load_sweep(tracking_uri(), "learn", result.sweep_id))
    assert "| variant | eval/scenes/i2t_r1 ↑ | eval/scenes/t2i_r1 ↑ | eval/scenes/seg_miou ↑ |" in table
    assert "| mim_on |" in table and "–" not in table


def test_concurrency_follows_the_cluster(home):
    plan = load_spec(SMOKE, smoke=True)
    assert concurrency(plan, {"CPU": 2}) == 1  # 1 worker + 1 CPU for Ray Data
    assert concurrency(plan, {"CPU": 8}) == 2  # bounded by the number of trials
    assert concurrency(plan, {"CPU": 8}, count=1) == 1  # a resume with one trial left
    with pytest.raises(UserError, match="needs 2 CPUs"):
        concurrency(plan, {"CPU": 1})


def test_evaluation_asks_for_no_more_cpus_than_the_largest_node_has(ray_session, home):
    """One task runs on one node: a paper-sized trial (8 workers × 8 CPUs + 1) must not wait forever."""
    config = load_spec(SMOKE, smoke=True).trials[0].config
    largest = max(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
    assert eval_cpus(config) == min(2.0, largest)  # the smoke trial: 1 worker + 1 CPU for Ray Data
    paper = {**config, "train": {**config["train"], "num_workers": 8, "cpus_per_worker": 8}}
    assert eval_cpus(paper) == largest < 65


def kill_trial_driver_after_a_logged_checkpoint(root, killed: list) -> None:
    """SIGKILL the process of the running trial's driver (Tune's `ImplicitFunc` actor) once its run
    has a checkpoint and MLflow has its first logged step: as when the driver's node dies."""
    import psutil

    client = MlflowClient(tracking_uri())

    def logged():
        exp = client.get_experiment_by_name("driver-loss")
        runs = client.search_runs([exp.experiment_id], "tags.`tipslab.role` = 'trial'") if exp else []
        return any(client.get_metric_history(r.info.run_id, "train/loss") for r in runs)

    wait_for(lambda: next(root.glob("**/checkpoint_*/model.pt"), None) and logged(), "a logged checkpoint", 900, 0.2)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if (proc.info["cmdline"] or [""])[0].startswith("ray::ImplicitFunc"):
            os.kill(proc.info["pid"], signal.SIGKILL)
            killed.append(proc.info["pid"])
            return


def driver_loss_spec(tmp_path, variants: str, **overrides):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: driver-loss\nbase: {TINY}\nbaseline: a\nvariants: {variants}\n"
        "overrides: {eval.probes: [retrieval], train.checkpoint_every: 2, train.steps: 8}\n"
        "metrics: [{key: eval/scenes/i2t_r1}]\nresources: {max_concurrent_trials: 1}\n"
    )
    return load_spec(spec, overrides=tiny_overrides(**{"train.steps": 8, "train.checkpoint_every": 2, **overrides}))


def shards_with_bad_rows(root) -> str:
    """A train split of 20 rows in one shard, its rows 17-19 not images: read in batches of 8, two
    full batches and a short last one, which is not trained on but whose bad rows (3 of its 4)
    still count. Step 3 is epoch 1's first batch: 16 + 4 + 8 rows seen, 3 bad (3/28 > 0.05)."""
    from conftest import spoil_rows

    from tipslab.jobs.data.pipeline.streaming import split_dir
    from tipslab.jobs.data.scenes.generate import generate_scenes

    data = str(root / "bad-scenes")
    path = split_dir(data, "train")
    if not os.path.exists(path):
        generate_scenes(path, 20, size=112, rows_per_shard=20, parallel=False)
        [shard] = sorted(p for p in (root / "bad-scenes" / "train").iterdir() if p.suffix == ".parquet")
        spoil_rows(shard, {i: ("image", b"not an image") for i in (17, 18, 19)})
    return data


def sweep_of_a_failing_trial(tmp_path, home, **kw):
    """A sweep whose one trial reads more bad rows than data.max_bad_fraction allows and stops at
    step 3: a failure of its own (RunStopped), final in its invocation; its result, its MLflow client
    and the failure's record. The bad rows are counted row by row through Ray Data in
    tests/jobs/data/pipeline/test_streaming.py; here, through a whole run to its stop."""
    from tipslab.orchestrator.trial import TRIAL_FAILED_FILE

    # One retry by Tune is enough to show that a retry does not train again.
    bad = {"data.root": shards_with_bad_rows(tmp_path), "data.scenes_train": 20, "data.max_bad_fraction": 0.05}
    # No checkpoint before the stop: a resumed sweep trains the trial again from its start.
    steps = {"train.steps": 3, "train.warmup_steps": 0, "train.checkpoint_every": 4}
    plan = driver_loss_spec(tmp_path, "{a: {}}", **{"train.max_failures": 1, **steps, **bad})
    result = run_sweep(plan, **kw)
    [marker] = home.glob(f"**/{TRIAL_FAILED_FILE}")
    assert "a-seed0" in str(marker)
    return result, MlflowClient(tracking_uri()), marker


def test_a_trial_that_fails_of_itself_fails_for_good_in_its_sweep(ray_session, home, tmp_path):
    result, client, marker = sweep_of_a_failing_trial(tmp_path, home)
    assert result.failed == ["a-seed0"]
    [run] = trial_runs(client, experiment="driver-loss")  # one run, failed, with the steps it trained
    assert run.info.status == "FAILED" and [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    # The failure, naming the rows and the bound, is kept in the run folder; Tune's retry raised it
    # again without training. That `--resume` (another invocation) tries it again is test_trial.py's,
    # and end to end `make soak`'s (below).
    failure = json.loads(marker.read_text())
    bound = "RunStopped: data: 3 of 28 rows seen were bad, more than data.max_bad_fraction = 0.05"
    assert failure["error"].startswith(bound), failure


@pytest.mark.soak
def test_a_trial_that_fails_of_itself_is_retried_by_a_resume_not_by_tune(ray_session, home, tmp_path):
    first, client, marker = sweep_of_a_failing_trial(tmp_path, home)
    invocation = json.loads(marker.read_text())["invocation"]
    # `--resume` is another invocation: the failed trial is tried again (and fails again), in a new run.
    again, _, _ = sweep_of_a_failing_trial(tmp_path, home, resume=True)
    assert (first.failed, again.failed, again.ran, again.reopened) == (["a-seed0"], ["a-seed0"], 1, 0)
    assert [r.info.status for r in trial_runs(client, experiment="driver-loss")] == ["FAILED", "FAILED"]
    assert json.loads(marker.read_text())["invocation"] != invocation  # the same run folder


# A trial driver SIGKILLed: `make soak`. Ray Train's placement-group cleaner, which frees the killed
# run's CPUs, asks Ray's state API for the controller with address "auto", which fails while another
# Ray instance runs on the machine (a test's cluster, a benchmark): the CPUs stay held and the
# retried trial waits for them. The chaos test kills trial drivers with their nodes, when a kill
# falls on one.
@pytest.mark.soak
def test_a_trial_whose_driver_dies_resumes_from_its_checkpoint_in_its_run(ray_session, home, tmp_path, capsys):
    import threading

    plan = driver_loss_spec(tmp_path, "{a: {}}")
    killed: list[int] = []
    killer = threading.Thread(target=kill_trial_driver_after_a_logged_checkpoint, args=(home, killed), daemon=True)
    killer.start()
    result = run_sweep(plan)
    killer.join(timeout=5)
    assert killed, "no trial driver was found to kill"
    assert result.failed == []
    client = MlflowClient(tracking_uri())
    [run] = trial_runs(client, experiment="driver-loss")
    assert run.info.status == "FINISHED"  # one run, gone on
    # a went on from a checkpoint, which it reported again: every step once, none missing.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [2, 4, 6, 8], steps
    assert run.data.metrics["train/resumed_from_step"] >= 2
    assert "eval/scenes/i2t_r1" in run.data.metrics
    assert "a-seed0  lost its driver" in capsys.readouterr().err


@pytest.mark.soak
def test_a_sweep_whose_driver_died_resumes_its_running_trial_from_its_checkpoint(ray_session, home, tmp_path):
    """The sweep's driver SIGKILLed (with its process group) while its one trial trains, after a
    checkpoint and a logged step; `--resume` goes on in the same Ray Train run folder and the same
    MLflow run, from the checkpoint, not from step 0."""
    import ray

    plan = driver_loss_spec(tmp_path, "{a: {}}")
    overrides = tiny_overrides(**{"train.steps": 8, "train.checkpoint_every": 2})
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # the session's Ray instance
    driver = tipslab("sweep", str(plan.path), *overrides, env=env, log=tmp_path / "driver.log", start_new_session=True)
    client = MlflowClient(tracking_uri())

    def checkpointed_and_logged():
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        runs = trial_runs(client, "RUNNING", experiment="driver-loss")
        logged = runs and client.get_metric_history(runs[0].info.run_id, "train/loss")
        return logged and next(home.glob("**/checkpoint_*/model.pt"), None) and runs[0]

    try:
        killed = wait_for(checkpointed_and_logged, "a checkpoint and a logged step", 900, 0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    folder = killed.data.tags["tipslab.train_run"]

    result = run_sweep(plan, resume=True)
    assert (result.kept, result.closed, result.ran, result.failed) == (0, 1, 1, [])
    [run] = trial_runs(client, experiment="driver-loss")  # the same run, open again and finished
    assert (run.info.run_id, run.info.status) == (killed.info.run_id, "FINISHED")
    assert run.data.tags["tipslab.train_run"] == folder and "tipslab.closed_by" not in run.data.tags
    resumed_from = run.data.metrics["train/resumed_from_step"]
    assert resumed_from >= 2 and resumed_from % 2 == 0
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [2, 4, 6, 8], steps  # every step once: none trained again, none lost
    assert len(list(home.glob("ray/driver-loss-a-seed0-*/"))) == 1  # one Ray Train run folder
    assert "eval/scenes/i2t_r1" in run.data.metrics


def test_a_trial_driver_imports_neither_mlflow_nor_the_model_stack():
    # Every trial's driver is a fresh process that imports the trainable's module before it builds
    # its trainer: MLflow and the model stack (timm, torchvision, torch._dynamo) added 2-3 s there.
    unwanted = ["mlflow", "timm", "torchvision", "torch._dynamo", "tipslab.models.tips"]
    code = f"import sys, tipslab.orchestrator.trial; print([m for m in {unwanted} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
