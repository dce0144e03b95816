"""`tipslab train`: one training run and its evaluation, tracked as one MLflow run."""
import os
import time
import uuid

import ray
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tipslab.jobs.data.prepare import ensure_scenes
from tipslab.jobs.pretrain import build_trainer

from .config import config_hash, flatten, load_experiment, to_dict
from .runtime import artifact_root, ensure_ray, storage_path, tracking_uri
from .sweep import _evaluate, trial_cpus
from .tracking import CHECKPOINT, CONFIG_HASH, LOGGED_PREFIXES, ROLE, redact

EXPERIMENT = "tipslab-train"


def run_single(config_path: str, overrides: list[str], address: str | None = None) -> dict:
    config = to_dict(load_experiment(config_path, overrides))  # rejected here, before Ray starts
    ensure_scenes(config)
    cluster = ensure_ray(address)
    if trial_cpus(config) > cluster.get("CPU", 0):
        from .errors import UserError

        raise UserError(f"the run needs {trial_cpus(config):g} CPUs but the Ray cluster has {cluster.get('CPU', 0):g}")
    name = f"train-{uuid.uuid4().hex[:8]}"
    result = build_trainer(config, name=name, storage_path=storage_path()).fit()
    metrics = ray.get(_evaluate.options(
        num_cpus=trial_cpus(config), scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    ).remote(result.checkpoint, config, os.path.join(storage_path(), name, "eval")))

    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT, artifact_location=f"{artifact_root()}/{EXPERIMENT}")
    run_id = client.create_run(exp_id, run_name=name, tags={
        ROLE: "train", CONFIG_HASH: config_hash(config), CHECKPOINT: result.checkpoint.path}).info.run_id
    params = [Param(k, redact(v)[:6000]) for k, v in flatten(config).items()]
    now = int(time.time() * 1000)
    history = [Metric(k, float(v), now, int(row["step"]))
               for row in result.metrics_dataframe.to_dict("records") for k, v in row.items()
               if k.startswith(LOGGED_PREFIXES) and v == v]
    steps = config["train"]["steps"]
    rows = [Metric(k, float(v), now, steps) for k, v in metrics.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(history + rows), 1000):
        client.log_batch(run_id, metrics=(history + rows)[i:i + 1000])
    client.log_dict(run_id, config, "config.json")
    client.log_dict(run_id, metrics, "eval_results.json")
    client.set_terminated(run_id, "FINISHED")
    return {"metrics": metrics, "checkpoint": result.checkpoint.path, "run_id": run_id}
