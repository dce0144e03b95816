"""Where things live and how Ray starts: the embedded defaults of one machine.

Everything a run writes goes under one home folder (`TIPSLAB_HOME`, default ./tipslab-runs): scene
shards, Ray's storage (checkpoints, trial folders), and the MLflow sqlite store with its artifacts.
"""

import logging
import os
from pathlib import Path

# Nothing calls out at run time: Ray's usage stats, MLflow's telemetry, hub downloads.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_DEDUP_LOGS": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow's "View run ... at: URL" on every run it ends: the URL is the tracking URI, password
    # included; the sweep says once, masked, where its run is.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # Ray Train's controller polls its workers at this interval, and a worker's `report` waits for
    # the poll: at the default 2 s, the smoke runs spent most of their time waiting (measured:
    # about 1.7 s per report on 2 cores).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Tune's own console output (its box, a TensorBoard hint for a tool we do not install, a results
    # folder that is not where the results are): off; orchestrator/progress.py says what matters.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Tune warns when a callback takes over 0.5 s; ours writes each report to MLflow, which on a
    # sqlite store shared by a busy machine took up to 0.9 s: warnings the user cannot act on.
    "TUNE_WARN_THRESHOLD_S": "5",
}

# Only where tipslab starts Ray itself, on this one machine.
LOCAL_ENV = {
    # Ray Train starts a process per run that polls the cluster for nodes about to be preempted
    # (cloud spot instances): of no use on one local machine, where it cost about 1.5 CPU-s at every
    # trial's start, while the worker imported its model (measured on 2 cores).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


# Lines that tell the user nothing they can act on: Ray warning at every local start that it chose
# token authentication; MLflow creating its tables; Tune saying it wrote its state files.
QUIET_LOGGERS = {
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    "mlflow.store.db.utils": logging.WARNING,
    "ray.tune.tune": logging.WARNING,
}


def quiet_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def home() -> Path:
    return Path(os.environ.get("TIPSLAB_HOME", "tipslab-runs")).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> str:
    return (home() / "mlartifacts").as_uri()


def storage_path() -> str:
    return str(home() / "ray")


def ensure_ray(address: str | None = None) -> dict:
    """Connect to `address` (or RAY_ADDRESS), or start a local instance with this machine's CPUs.

    Returns the cluster's resources.
    """
    import ray

    quiet_environment()
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        runtime_env = {"env_vars": {k: os.environ[k] for k in QUIET_ENV}}
        if address:
            check_reachable(address)
            context = ray.init(
                address=address, runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING
            )
        else:
            runtime_env["env_vars"].update(LOCAL_ENV)
            context = ray.init(
                num_cpus=os.cpu_count(), runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING
            )
        # Ray's "Started a local Ray instance" line is quiet (WARNING): the sweep's first line names the dashboard.
        RAY_PLACES["dashboard"] = f"http://{context.dashboard_url}" if context.dashboard_url else ""
        RAY_PLACES["logs"] = os.path.join(context.address_info.get("session_dir") or "", "logs")
    return ray.cluster_resources()


def start_data_stats_actor() -> None:
    """Start Ray Data's stats actor from this driver, outside any placement group, if it is not up.

    Ray Data starts one per cluster (detached) where a dataset first runs. In a sweep that is inside
    a trial, whose placement group Tune makes capture the tasks and actors started within it: the
    stats actor then joins the trial's group and dies with it, and every trial started its own, a
    fresh process (about 1.5 CPU-s, measured on 2 cores) while its worker built the model. Started
    here, it lasts as long as the cluster, and the trials find it (Ray Data asks for it by name).
    Ray Data's own function for it is internal (Ray is pinned; tests/orchestrator/test_runtime.py
    fails if it changes).
    """
    from ray.data._internal.stats import get_or_create_stats_actor

    get_or_create_stats_actor()


def check_reachable(address: str, within_s: float = 20.0) -> None:
    """A `host:port` Ray address must answer a TCP connection within `within_s` (tried every
    second): Ray's own connect retries a cluster that is gone for minutes, printing warnings. "auto"
    and `ray://` addresses are left to Ray."""
    import socket
    import time

    from .errors import UserError

    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not host or not port.isdigit():
        return
    deadline, why = time.monotonic() + within_s, ""
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as err:
            why = err.strerror or type(err).__name__
        if time.monotonic() > deadline:
            raise UserError(
                f"no Ray cluster answers at {address} ({why}, tried for {within_s:.0f} s): start it, or check "
                "--address / RAY_ADDRESS (without one, tipslab starts a local Ray instance)"
            )
        time.sleep(1.0)


RAY_PLACES = {"dashboard": "", "logs": ""}  # where the user can look: set when this process connects
