"""What every tipslab MLflow run records about where it ran: the code (version, git commit and a dirty
flag), the driver machine's system metrics, and the probes' protocols behind each eval metric."""

import json
import logging
import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from tipslab.jobs.redact import redact, redact_name

GIT_COMMIT, GIT_DIRTY = "mlflow.source.git.commit", "tipslab.git_dirty"
SYSTEM_METRICS_EVERY_S = 10
# + a metric key (eval/<dataset>/<metric>): the protocol that made the number and its settings
PROTOCOL = "tipslab.protocol."
PROTOCOLS = "protocols"  # the entry of eval_results.json naming each probe's protocol (jobs/eval/evaluate.py)


def code_version() -> str:
    from importlib.metadata import version

    return version("tipslab")


def git_tags(where: Path | None = None) -> dict:
    """The commit of the checkout tipslab runs from, and whether its tracked files differ from it;
    {} when tipslab is not in a git checkout (an installed wheel) or git is absent."""
    where = where or Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", "-C", str(where), *a], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {GIT_COMMIT: commit, GIT_DIRTY: str(dirty).lower()}


def system_metrics(run_id: str, tracking_uri: str, resume: bool):
    """MLflow's monitor of this machine (CPU, memory, disk, network; NVIDIA GPUs when nvidia-ml-py
    finds one), logging `system/*` on `run_id` every SYSTEM_METRICS_EVERY_S; None without psutil."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        return None
    logging.getLogger(SystemMetricsMonitor.__module__).setLevel(logging.WARNING)  # its start/stop lines
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SYSTEM_METRICS_EVERY_S, resume_logging=resume, tracking_uri=tracking_uri
    )
    monitor.start()
    return monitor


def read_protocols(eval_dir: str) -> dict:
    """The `protocols` entry of the evaluation's eval_results.json ({} when there is none)."""
    import pyarrow.fs

    uri = f"{eval_dir.rstrip('/')}/eval_results.json"
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else f"file://{uri}")
        with fs.open_input_stream(path) as f:
            return json.loads(f.read()).get(PROTOCOLS) or {}
    except (OSError, ValueError, AttributeError):
        return {}


def tag_protocols(client: MlflowClient, run_id: str, protocols: dict) -> None:
    """One tag per metric key, `tipslab.protocol.<key>`: the protocol that made it, with its settings
    (what `tipslab table` footnotes under each column)."""
    from tipslab.jobs.eval.registry import protocol_by_metric

    for key, text in protocol_by_metric(protocols).items():
        client.set_tag(run_id, PROTOCOL + redact_name(key), redact(text)[:5000])
