"""Ray Tune sweeps: one trial per (variant, seed) or per search sample; each trains, then evaluates.

MLflow is the record of what is done: a resumed sweep gives Tune only the trials without a finished
run of the same config hash, so growing a spec (a row, a seed) and resuming trains only the new runs.

Resources are explicit: a trial's driver function takes no CPU (the TorchTrainer's workers and
Ray Data's budget hold the trial's CPUs), and the number of concurrent trials follows from what the
cluster has, so a 2-core machine runs one trial at a time instead of waiting forever.
"""

import json
import math
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tipslab.jobs import storage as run_storage
from tipslab.jobs.config import as_dict, experiment
from tipslab.jobs.eval.evaluate import evaluate_checkpoint
from tipslab.jobs.redact import redact, remember_keys, secret_keys
from tipslab.jobs.storage import to_uri
from tipslab.jobs.train.trainer import build_trainer

from .errors import CommandFailed, UserError
from .faults import check_storage, disk_fault, size, storage_guard
from .meter import ensure_scenes_shown
from .progress import ProgressCallback
from .runtime import RAY_PLACES, ensure_ray, storage_path, tracking_uri
from .search import scheduler, searcher, tune_space
from .spec import Plan, Trial
from .tracking import SweepTracker, TrackingCallback

# A trial's driver only waits on its TorchTrainer: no CPU, and a logical memory reservation (Tune
# refuses an empty request).
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 1024**2}


def _finish(tracker: SweepTracker, status: str, raising: bool = True) -> None:
    """End the sweep's parent run; what tracking could not write fails the command in one line (the
    trials' checkpoints and results are in the run storage whatever happened to MLflow), or, while
    another error is on its way out (`raising` False), is told beside it."""
    unwritten = tracker.finish(status)
    if unwritten:
        message = f"tracking: {unwritten}; the trials' checkpoints are under {storage_path()}"
        if raising:
            raise CommandFailed(message)
        print(message, file=sys.stderr, flush=True)


def trial_cpus(config: dict) -> float:
    train = config["train"]
    return train["num_workers"] * train["cpus_per_worker"] + config["data"]["cpus"]


def eval_cpus(config: dict) -> float:
    """The evaluation is one task on one node: the trial's CPUs, but never more than the largest
    node has (a paper-sized trial asks for 65 CPUs across nodes; no node has that many)."""
    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
    return min(trial_cpus(config), largest)


def concurrency(plan: Plan, cluster: dict, count: int | None = None) -> int:
    """How many trials can run at once on this cluster (at least 1, or an error)."""
    config = plan.trials[0].config
    need_cpu, have_cpu = trial_cpus(config), cluster.get("CPU", 0)
    if need_cpu > have_cpu:
        raise UserError(
            f"a trial needs {need_cpu:g} CPUs (workers_per_trial x cpus_per_worker + data.cpus) "
            f"but the Ray cluster has {have_cpu:g}: lower resources or data.cpus"
        )
    limit = math.floor(have_cpu / need_cpu)
    gpus = config["train"]["num_workers"] * config["train"]["gpus_per_worker"]
    if gpus:
        if gpus > cluster.get("GPU", 0):
            raise UserError(f"a trial needs {gpus:g} GPUs but the Ray cluster has {cluster.get('GPU', 0):g}")
        limit = min(limit, math.floor(cluster["GPU"] / gpus))
    if plan.resources.max_concurrent_trials > 0:
        limit = min(limit, plan.resources.max_concurrent_trials)
    return max(1, min(limit, count or len(plan.trials)))


def checkpoint_bytes(config: dict, cache: dict | None = None) -> int:
    """About what one checkpoint of a trial holds: student and teacher weights and AdamW's two
    moments, 4 bytes a parameter each (counted on a model built on the meta device: no memory)."""
    import torch

    from tipslab.models.checkpoint import tips_config
    from tipslab.models.tips import TIPSStudent

    key = json.dumps([config["model"], config["loss"]], sort_keys=True, default=str)
    if cache is None or key not in cache:
        with torch.device("meta"):
            count = sum(p.numel() for p in TIPSStudent(tips_config(config)).parameters())
        if cache is None:
            return 16 * count
        cache[key] = 16 * count
    return cache[key]


def storage_need(trials: list[Trial]) -> tuple[int, str]:
    """What the trials' checkpoints take at most (each keeps `train.checkpoints_to_keep`, and
    writes one more before the oldest goes), and those words for a message."""
    cache: dict = {}
    need = sum(checkpoint_bytes(t.config, cache) * (t.config["train"]["checkpoints_to_keep"] + 1) for t in trials)
    return need, f"the checkpoints of {len(trials)} trial(s) (about {size(need / max(1, len(trials)))} each)"


@ray.remote
def _evaluate(checkpoint, config, out_dir: str, secret: list[str]) -> dict:
    remember_keys(as_dict(config), secret)
    with checkpoint.as_directory() as d:
        return evaluate_checkpoint(d, config, out_dir)


def trial_resolver(plan: Plan):
    """Tune's trial config -> our Trial: a fixed trial by name, or a search sample's values."""
    by_name = {t.name: t for t in plan.trials}
    sampled: dict[tuple, Trial] = {}

    def resolve(params: dict) -> Trial:
        if "trial" in params:
            return by_name[params["trial"]]
        values = {k: params[k] for k in plan.search.space}
        key = tuple(sorted(values.items()))
        if key not in sampled:
            start = plan.trials[0]
            sampled[key] = plan.sampled_trial(start.variant, start.seed, values)
        return sampled[key]

    return resolve


def run_name(plan: Plan, trial: Trial) -> str:
    """A folder-safe Ray Train run name (variant names may hold '/', '[', ',')."""
    if trial.config["train"].get("run_name"):
        return trial.config["train"]["run_name"]  # a named run (train.run_name) resumes when it exists
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", f"{plan.spec['name']}-{trial.name}-{tune.get_context().get_trial_id()}")


# Written in a trial's run folder when the trial fails with an error of its own (its training,
# after Ray Train's retries, or its evaluation): Tune's retries are for a trial whose driver was lost
# with its node, and a retry of a trial that failed for good raises the same error at once.
TRIAL_FAILED_FILE = "trial_failed.json"


class TrialFailed(RuntimeError):
    """An earlier attempt of this trial failed with an error of its own (TRIAL_FAILED_FILE)."""


def trial_retries(plan: Plan) -> int:
    """How often Tune starts a trial again whose driver was lost: as often as Ray Train restarts
    the workers of a run (the largest train.max_failures of the plan's trials)."""
    return max(int(t.config["train"]["max_failures"]) for t in plan.trials)


def run_trial(params: dict, plan: Plan, storage: str, secret: tuple = ()) -> None:
    """The Tune trainable: pretrain with a TorchTrainer, then evaluate its last checkpoint.

    `secret`: the config keys whose values came from the environment (names only; the driver found
    them): this process, the workers and the evaluation mask those values in what they write.

    A trial's driver (this function's process) dies with its node; Tune then starts it again
    (`trial_retries`) under the same trial id, so the same run name, and Ray Train resumes the run
    from its latest checkpoint. An error raised here is the trial's own, and final: it is written
    to TRIAL_FAILED_FILE, so that a retry after it does not train again."""
    trial = trial_resolver(plan)(params)
    remember_keys(trial.config, secret)
    name = run_name(plan, trial)
    failed_file = run_storage.join(storage, name, TRIAL_FAILED_FILE)
    if run_storage.exists(failed_file):
        raise TrialFailed(json.loads(run_storage.read_bytes(failed_file))["error"])
    try:
        _train_and_evaluate(trial, name, storage, secret)
    except Exception as err:
        run_storage.write_bytes(failed_file, json.dumps({"error": f"{type(err).__name__}: {err}"}).encode())
        raise


def _train_and_evaluate(trial: Trial, name: str, storage: str, secret: tuple) -> None:
    exp = experiment(trial.config)  # the jobs get the typed config; the trial keeps its dict (config_hash, MLflow)
    trainer = build_trainer(exp, name=name, storage_path=storage, callbacks=[TuneReportCallback()], secret_keys=secret)
    result = trainer.fit()
    # The trial's placement group only holds the driver; the evaluation takes the CPUs the trainer freed.
    outside = PlacementGroupSchedulingStrategy(placement_group=None)
    checkpoint = result.checkpoint
    out_dir = os.path.join(storage, name, "eval")
    metrics = ray.get(
        _evaluate.options(num_cpus=eval_cpus(trial.config), scheduling_strategy=outside).remote(
            checkpoint, exp, out_dir, list(secret)
        )
    )
    tune.report(
        {
            **{redact(k): v for k, v in metrics.items()},
            "step": exp.train.steps,
            "checkpoint_uri": to_uri(checkpoint.filesystem, checkpoint.path),
            "eval_dir": out_dir,
        }
    )


@dataclass
class SweepResult:
    experiment: str
    sweep_id: str
    parent_run_id: str
    failed: list[str]
    ran: int = 0  # trials this invocation ran
    kept: int = 0  # finished runs a resume kept
    closed: int = 0  # runs left RUNNING by a dead driver, marked KILLED
    timings: dict = field(default_factory=dict)  # seconds of the driver's own steps: ray_start_s, scenes_s


# Tune hands these variables of the driver to every trial through its runtime_env
# (ray.tune.execution.class_cache), which Ray writes to runtime_env_agent.log and shows on its
# dashboard. A trial finds its credentials where the AWS SDK looks on its node (jobs/storage.py).
TUNE_PROPAGATED_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}


def keep_credentials_off_runtime_env() -> None:
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(TUNE_PROPAGATED_CREDENTIALS)


def run_sweep(plan: Plan, address: str | None = None, resume: bool = False) -> SweepResult:
    """Run what the spec asks for; with `resume`, only what the store does not hold finished.

    The tracker comes first: a store that is away, or a second driver on a sweep whose first is
    alive, stops here before Ray starts. A launch that fails after it ends its parent run FAILED."""
    tracker = SweepTracker(tracking_uri(), plan, resume=resume)
    try:
        return _run(plan, tracker, address)
    except BaseException as err:
        if not tracker.ended:
            _finish(tracker, "FAILED" if isinstance(err, Exception) else "KILLED", raising=False)
        raise


def _run(plan: Plan, tracker: SweepTracker, address: str | None) -> SweepResult:
    start = time.perf_counter()
    cluster = ensure_ray(address)  # before the scenes, so that missing ones render in parallel Ray tasks
    timings = {"ray_start_s": time.perf_counter() - start}
    for trial in plan.trials:
        ensure_scenes_shown(experiment(trial.config))
    timings["scenes_s"] = time.perf_counter() - start - timings["ray_start_s"]
    search = plan.search
    tune_config = {"reuse_actors": False, "trial_dirname_creator": lambda t: f"trial_{t.trial_id}"}
    if plan.sampled:
        done = tracker.finished_samples(search.metric)
        count = search.num_samples - len(tracker.done)
        param_space = tune_space(search)
        tune_config.update(
            num_samples=count,
            search_alg=searcher(search, plan.trials[0].seed, done),
            metric=search.metric,
            mode=search.mode,
        )
    else:
        todo = [t.name for t in plan.trials if not tracker.is_done(t)]
        count = len(todo)
        param_space = {"trial": tune.grid_search(todo)}
    kept, closed = len(tracker.done), len(tracker.closed)
    if count <= 0:
        tracker.log_results()
        _finish(tracker, "FINISHED")
        return SweepResult(plan.spec["name"], tracker.sweep_id, tracker.parent_id, [], 0, kept, closed, timings)
    if search is not None:
        # Train's reports carry the objective only at probe steps and at the end.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        tune_config["scheduler"] = scheduler(search, search.metric, search.mode)
    max_concurrent = concurrency(plan, cluster, count)
    where = [f"MLflow run {tracker.parent_id} in experiment {plan.spec['name']!r} (`tipslab ui`)"]
    where += [
        f"{k} {v}" for k, v in (("Ray dashboard", RAY_PLACES["dashboard"]), ("worker logs", RAY_PLACES["logs"])) if v
    ]
    print(
        redact(f"sweep {plan.spec['name']}: {count} trial(s), {max_concurrent} at a time; " + "; ".join(where)),
        file=sys.stderr,
    )
    storage = storage_path()
    todo_trials = [plan.trials[0]] * count if plan.sampled else [t for t in plan.trials if not tracker.is_done(t)]
    check_storage(storage, *storage_need(todo_trials))
    keep_credentials_off_runtime_env()
    secret = tuple(sorted({k for t in plan.trials for k in secret_keys(t.config)}))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, plan=plan, storage=storage, secret=secret), DRIVER_RESOURCES
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, **tune_config),
        run_config=tune.RunConfig(
            name=f"{plan.spec['name']}-{tracker.sweep_id}-{uuid.uuid4().hex[:6]}",
            storage_path=storage,
            verbose=0,
            callbacks=[TrackingCallback(tracker, trial_resolver(plan)), ProgressCallback(trial_resolver(plan), count)],
            failure_config=tune.FailureConfig(max_failures=trial_retries(plan)),  # a lost trial driver (run_trial)
        ),
    )
    try:
        with storage_guard(storage):
            results = tuner.fit()
    except UserError:
        _finish(tracker, "FAILED", raising=False)
        raise
    except BaseException:
        _finish(tracker, "KILLED", raising=False)
        raise
    resolve = trial_resolver(plan)
    failed = [resolve(r.config).name for r in results if r.error]
    disk = next((d for d in (disk_fault(r.error, storage) for r in results if r.error) if d), None)
    if disk is not None:  # a trial that failed for want of disk: the disk is the message
        _finish(tracker, "FAILED", raising=False)
        raise disk
    tracker.log_results()
    _finish(tracker, "FAILED" if failed else "FINISHED")
    return SweepResult(plan.spec["name"], tracker.sweep_id, tracker.parent_id, failed, count, kept, closed, timings)
