"""The MLflow UI on a smoke sweep's store, as a research team opens it with `tipslab ui`.

The store is written by the sweep's own tracker (SweepTracker, the smoke spec's plan, reports shaped
like the training loop's) without Ray or training: the MLflow side of a smoke sweep in seconds. It is
then moved to another folder before the UI opens on it, so every artifact read below also checks that
a moved store stays readable. The checks go through the REST API that the UI's pages call, and one
headless Chromium page load (skipped without a chromium binary) renders the comparison view.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SMOKE = REPO / "ablations" / "smoke.yaml"


def loop_reports(i: int) -> list[tuple[int, dict]]:
    """What the loop reports at steps 5 and 10 (one stage: train/stage and the temperature fixed),
    then the evaluation's report at the last step."""
    train = [
        (
            step,
            {
                "train/loss": 3.0 - step / 10 - i,
                "train/stage": 0,
                "train/lr": 1e-4 * step,
                "train/temperature": 0.07,
                "perf/images_per_s": 50.0,
                "data/rows_seen": 8 * step,
                "data/bad_rows": 1,
            },
        )
        for step in (5, 10)
    ]
    evals = {"eval/scenes/i2t_r1": 10.0 + i, "eval/scenes/t2i_r1": 9.0 + i, "eval/scenes/seg_miou": 30.0 + i}
    return [*train, (10, {**evals, "step": 10})]


@pytest.fixture(scope="module")
def moved_store(tmp_path_factory):
    """A finished smoke sweep's store, written under one home folder and then moved to another."""
    from tipslab.orchestrator.runtime import tracking_uri
    from tipslab.orchestrator.spec import load_spec
    from tipslab.orchestrator.tracking import SweepTracker

    root = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIPSLAB_HOME", str(root / "written"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # a sample before the sweep ends
        plan = load_spec(SMOKE, smoke=True)
        tracker = SweepTracker(tracking_uri(), plan)
        for i, trial in enumerate(plan.trials):
            tracker.start_trial(trial)
            for step, report in loop_reports(i):
                tracker.log_metrics(trial.name, report, step)
            tracker.finish_trial(trial.name, "FINISHED", report)
        time.sleep(1.5)
        tracker.finish("FINISHED")
        tracker.log_results()
    shutil.move(root / "written", root / "moved")
    return root / "moved", [t.variant for t in plan.trials]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(moved_store):
    """`tipslab ui` on the moved store, niced; its base URL and what it printed."""
    home, _ = moved_store
    port = free_port()
    env = {**os.environ, "TIPSLAB_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = home.parent / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["nice", "-n", "19", sys.executable, "-m", "tipslab.orchestrator.cli", "ui", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600  # seconds on an idle machine; minutes on a loaded 2-core one
        while "In the UI:" not in log.read_text():  # the links are printed
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(1)
        yield f"http://127.0.0.1:{port}", log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)  # tipslab ui stops its server
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def api(base: str, path: str, **query):
    url = f"{base}/ajax-api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def artifact(base: str, run_id: str, path: str) -> str:
    url = f"{base}/get-artifact?{urllib.parse.urlencode({'run_uuid': run_id, 'path': path})}"
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read().decode()


def runs_of(base: str):
    exp = api(base, "experiments/get-by-name", experiment_name="smoke")["experiment"]
    body = json.dumps({"experiment_ids": [exp["experiment_id"]], "max_results": 100}).encode()
    req = urllib.request.Request(
        f"{base}/ajax-api/2.0/mlflow/runs/search", body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        runs = json.load(r)["runs"]
    tags = lambda run: {t["key"]: t["value"] for t in run["data"].get("tags", [])}  # noqa: E731
    parent = next(r for r in runs if tags(r).get("tipslab.role") == "sweep")
    trials = [r for r in runs if tags(r).get("tipslab.role") == "trial"]
    return exp, parent, trials, tags


def test_ui_prints_where_to_look(ui):
    base, printed = ui
    assert f"MLflow UI up: {base}/#/experiments?workflowType=machine_learning" in printed
    assert f"smoke: {base}/#/experiments/" in printed and "viewStateShareKey=tipslab" in printed
    assert "Warning" not in printed and "GET /" not in printed  # no deprecation warnings, no access log


def test_experiment_is_an_ml_one_with_its_comparison_view(ui):
    exp, _, _, _ = runs_of(ui[0])
    tags = {t["key"]: t["value"] for t in exp["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp["artifact_location"] == "mlflow-artifacts:/smoke"  # no folder in it: the store can move
    view = json.loads(tags["mlflow.sharedViewState.tipslab"])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "tipslab.variant"}]
    assert view["selectedColumns"][:4] == [
        "metrics.`eval/scenes/i2t_r1`",
        "metrics.`eval/scenes/t2i_r1`",
        "metrics.`eval/scenes/seg_miou`",
        "params.`loss.mim_weight`",
    ]


def test_trial_runs_hold_metrics_constants_as_params_bad_rows_and_git(ui, moved_store):
    _, parent, trials, tags = runs_of(ui[0])
    assert sorted(tags(r)["tipslab.variant"] for r in trials) == sorted(moved_store[1]) == ["mim_off", "mim_on"]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    for run in trials:
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        i = ["mim_off", "mim_on"].index(tags(run)["tipslab.variant"])
        assert metrics["eval/scenes/i2t_r1"] == 10.0 + i and metrics["eval/scenes/seg_miou"] == 30.0 + i
        assert metrics["data/bad_rows"] == 1 and metrics["data/rows_seen"] == 80
        assert tags(run)["tipslab.bad_rows"] == "1 of 80"
        # constant in the run: a param, no chart; changing (the lr's warm-up): a metric
        assert params["train/stage"] == "0" and params["train/temperature"] == "0.07"
        assert "train/stage" not in metrics and "train/temperature" not in metrics and "train/lr" in metrics
    for run in [parent, *trials]:
        assert tags(run)["mlflow.source.git.commit"] == commit.strip()
        assert tags(run)["tipslab.git_dirty"] in ("true", "false")
    parent_metrics = {m["key"] for m in parent["data"]["metrics"]}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= parent_metrics


def test_parent_run_holds_table_and_report_readable_after_the_move(ui):
    base = ui[0]
    _, parent, _, _ = runs_of(base)
    run_id = parent["info"]["run_id"]
    files = {f["path"] for f in api(base, "artifacts/list", run_id=run_id)["files"]}
    assert {"spec.json", "recipe.md", "table.md", "table.html", "report"} <= files
    table = artifact(base, run_id, "table.md")
    assert "| mim_on" in table and "| mim_off" in table and "I→T R@1" in table
    assert "<table" in artifact(base, run_id, "table.html")
    report = artifact(base, run_id, "report/index.html")
    assert "<h2>Table</h2>" in report and "mim_on" in report


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (make test installs Debian's chromium)")
def test_chromium_renders_the_runs_grouped_by_variant_with_metric_columns(ui, tmp_path):
    base, printed = ui
    link = next(line.split(": ", 1)[1] for line in printed.splitlines() if line.strip().startswith("smoke: "))
    common = [
        "nice",
        "-n",
        "19",
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=20000",
        "--window-size=1600,1000",
    ]
    dom = subprocess.run([*common, "--dump-dom", link], capture_output=True, text=True, timeout=300).stdout
    for text in ("Model training", "Group: mim_on", "Group: mim_off", "mim_on-seed0", "mim_off-seed0"):
        assert text in dom, text
    for column in ("eval/scenes/i2t_r1", "eval/scenes/t2i_r1", "eval/scenes/seg_miou", "loss.mim_weight"):
        assert f'col-id="metrics.`{column}`"' in dom or f'col-id="params.`{column}`"' in dom, column
    shot = os.environ.get("TIPSLAB_UI_SCREENSHOT")  # a screenshot for a reviewer, when asked for
    if shot:
        subprocess.run([*common, f"--screenshot={shot}", link], capture_output=True, timeout=300)
