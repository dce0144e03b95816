"""Ray Tune sweeps: one trial per (variant, seed); each trial trains, then evaluates.

Resources are explicit: a trial's driver function takes no CPU (the TorchTrainer's workers and
Ray Data's budget hold the trial's CPUs), and the number of concurrent trials follows from what the
cluster has, so a 2-core machine runs one trial at a time instead of waiting forever.
"""
import math
import os
from dataclasses import dataclass

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tipslab.jobs.data.prepare import ensure_scenes
from tipslab.jobs.evaluate import evaluate_checkpoint
from tipslab.jobs.pretrain import build_trainer

from .errors import UserError
from .runtime import ensure_ray, storage_path, tracking_uri
from .spec import Plan
from .tracking import SweepTracker, TrackingCallback


# A trial's driver only waits on its TorchTrainer: no CPU, and a logical memory reservation (Tune
# refuses an empty request).
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 1024**2}


def trial_cpus(config: dict) -> float:
    train = config["train"]
    return train["num_workers"] * train["cpus_per_worker"] + config["data"]["cpus"]


def concurrency(plan: Plan, cluster: dict) -> int:
    """How many trials can run at once on this cluster (at least 1, or an error)."""
    config = plan.trials[0].config
    need_cpu, have_cpu = trial_cpus(config), cluster.get("CPU", 0)
    if need_cpu > have_cpu:
        raise UserError(f"a trial needs {need_cpu:g} CPUs (workers_per_trial x cpus_per_worker + data.cpus) "
                        f"but the Ray cluster has {have_cpu:g}: lower resources or data.cpus")
    limit = math.floor(have_cpu / need_cpu)
    gpus = config["train"]["num_workers"] * config["train"]["gpus_per_worker"]
    if gpus:
        if gpus > cluster.get("GPU", 0):
            raise UserError(f"a trial needs {gpus:g} GPUs but the Ray cluster has {cluster.get('GPU', 0):g}")
        limit = min(limit, math.floor(cluster["GPU"] / gpus))
    if plan.resources.max_concurrent_trials > 0:
        limit = min(limit, plan.resources.max_concurrent_trials)
    return max(1, min(limit, len(plan.trials)))


@ray.remote
def _evaluate(checkpoint, config: dict, out_dir: str) -> dict:
    with checkpoint.as_directory() as d:
        return evaluate_checkpoint(d, config, out_dir)


def run_trial(params: dict, plan: Plan, storage: str) -> None:
    """The Tune trainable: pretrain with a TorchTrainer, then evaluate its last checkpoint."""
    trial = next(t for t in plan.trials if t.name == params["trial"])
    name = f"{plan.spec['name']}-{trial.name}-{tune.get_context().get_trial_id()}"
    result = build_trainer(trial.config, name=name, storage_path=storage, callbacks=[TuneReportCallback()]).fit()
    checkpoint = result.checkpoint
    out_dir = os.path.join(storage, name, "eval")
    # The trial's placement group only holds the driver; the evaluation takes the CPUs the trainer freed.
    outside = PlacementGroupSchedulingStrategy(placement_group=None)
    metrics = ray.get(_evaluate.options(num_cpus=trial_cpus(trial.config), scheduling_strategy=outside)
                      .remote(checkpoint, trial.config, out_dir))
    tune.report({**metrics, "step": trial.config["train"]["steps"], "checkpoint_uri": checkpoint.path})


@dataclass
class SweepResult:
    experiment: str
    sweep_id: str
    parent_run_id: str
    failed: list[str]


def run_sweep(plan: Plan, address: str | None = None) -> SweepResult:
    for trial in plan.trials:
        ensure_scenes(trial.config)
    cluster = ensure_ray(address)
    max_concurrent = concurrency(plan, cluster)
    tracker = SweepTracker(tracking_uri(), plan)
    storage = storage_path()
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan, storage=storage), DRIVER_RESOURCES)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.name for t in plan.trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"{plan.spec['name']}-{tracker.sweep_id}", storage_path=storage, verbose=0,
            callbacks=[TrackingCallback(tracker, {t.name: t for t in plan.trials})],
            failure_config=tune.FailureConfig(max_failures=0),  # Ray Train retries; Tune does not again
        ),
    )
    try:
        results = tuner.fit()
    except BaseException:
        tracker.finish("KILLED")
        raise
    failed = [r.config["trial"] for r in results if r.error]
    tracker.finish("FAILED" if failed else "FINISHED")
    return SweepResult(plan.spec["name"], tracker.sweep_id, tracker.parent_id, failed)
