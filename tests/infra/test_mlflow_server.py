"""infra/mlflow/serve.sh: a real MLflow server on loopback (sqlite runs, artifacts on the S3-compatible
server), that a client logs a run to and reads back, needing no AWS credentials of its own."""

import os
import signal
import subprocess
import time
import urllib.request

import boto3
import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from tipslab.orchestrator.localcluster import free_port

SERVE = REPO / "infra" / "mlflow" / "serve.sh"


@pytest.fixture
def server(tmp_path, s3, s3_endpoint):
    """serve.sh with its default sqlite store under tmp_path and artifacts in the test bucket; the
    server alone holds the S3 credentials and endpoint."""
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [
            str(SERVE),
            "--port",
            str(port),
            "--workers",
            "1",
            "--dir",
            str(tmp_path / "store"),
            "--artifacts-destination",
            f"{s3}/mlflow",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                break
        except OSError:
            pass
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (
            "MLflow server not ready in 180 s:\n" + (tmp_path / "server.log").read_text()[-3000:]
        )
        time.sleep(0.5)
    yield url, tmp_path / "store"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def test_a_run_logged_to_the_server_reads_back(server, tmp_path):
    url, store = server
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name)  # the client uploads and downloads through the server
        run_id = log_and_read_back(url, store, tmp_path)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="tipslab-test")["Contents"]]
    assert any(k.startswith("mlflow/") and k.endswith(f"{run_id}/artifacts/eval_results.json") for k in keys), keys


def log_and_read_back(url, store, tmp_path) -> str:
    client = MlflowClient(url)
    experiment = client.create_experiment("served")
    run = client.create_run(experiment, tags={"tipslab.role": "trial"})
    client.log_param(run.info.run_id, "loss.mim_weight", 0.2)
    for step, loss in enumerate([2.5, 2.0, 1.6]):
        client.log_metric(run.info.run_id, "train/loss", loss, step=step)
    (tmp_path / "eval_results.json").write_text('{"eval/scenes/i2t_r1": 41.5}')
    client.log_artifact(run.info.run_id, str(tmp_path / "eval_results.json"))
    client.set_terminated(run.info.run_id)

    again = MlflowClient(url).get_run(run.info.run_id)
    assert again.info.status == "FINISHED" and again.data.params == {"loss.mim_weight": "0.2"}
    history = MlflowClient(url).get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.5), (1, 2.0), (2, 1.6)]
    downloaded = MlflowClient(url).download_artifacts(run.info.run_id, "eval_results.json", str(tmp_path / "back"))
    assert open(downloaded).read() == '{"eval/scenes/i2t_r1": 41.5}'
    assert (store / "mlflow.db").is_file()
    return run.info.run_id


def test_serve_sh_rejects_an_unknown_argument():
    done = subprocess.run([str(SERVE), "--prot", "5000"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown argument '--prot'" in done.stderr
