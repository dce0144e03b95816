"""Where things live and how Ray starts: the embedded defaults of one machine.

Everything a run writes goes under one home folder (`TIPSLAB_HOME`, default ./tipslab-runs): scene
shards, Ray's storage (checkpoints, trial folders), and the MLflow sqlite store with its artifacts.
"""

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
    # Ray Train's controller polls its workers at this interval, and a worker's `report` waits for
    # the poll: at the default 2 s, the smoke runs spent most of their time waiting (measured:
    # about 1.7 s per report on 2 cores).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
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
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        runtime_env = {"env_vars": {k: os.environ[k] for k in QUIET_ENV}}
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count(), runtime_env=runtime_env, log_to_driver=False)
    return ray.cluster_resources()
