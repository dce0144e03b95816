"""Ray Tune sweeps: one trial per (variant, seed) or per search sample; each trains, then evaluates.

MLflow is the record of what is done: a resumed sweep gives Tune only the trials without a finished
run of the same config hash, so growing a spec (a row, a seed) and resuming trains only the new runs.

Resources are explicit: a trial's driver function takes no CPU (the TorchTrainer's workers and
Ray Data's budget hold the trial's CPUs), and the number of concurrent trials follows from what the
cluster has, so a 2-core machine runs one trial at a time instead of waiting forever.
"""

import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field

from ray import tune

from tipslab.jobs.config import experiment
from tipslab.jobs.redact import redact, secret_keys
from tipslab.models.param_counts import param_counts

from .errors import CommandFailed, UserError
from .faults import check_storage, disk_fault, size, storage_guard
from .leftovers import remove_dead_jobs_placement_groups
from .meter import ensure_scenes_shown
from .progress import ProgressCallback
from .runtime import RAY_PLACES, ensure_ray, start_data_stats_actor, storage_path, tracking_uri
from .search import scheduler, searcher, tune_space
from .spec import Plan, Trial
from .tracking import SweepTracker
from .tracking_callback import TrackingCallback
from .trial import run_trial, trial_cpus, trial_resolver

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


def checkpoint_bytes(config: dict) -> int:
    """About what one checkpoint of a trial holds: the student's and the teacher's weights and
    AdamW's two moments of the trainable ones, 4 bytes each, counted from the config
    (models/param_counts.py: the model stack is not imported for it)."""
    counts = param_counts(config)
    return 4 * (counts.student + counts.teacher + 2 * counts.trainable)


def storage_need(trials: list[Trial]) -> tuple[int, str]:
    """What the trials' checkpoints take at most (each keeps `train.checkpoints_to_keep`, and
    writes one more before the oldest goes), and those words for a message."""
    need = sum(checkpoint_bytes(t.config) * (t.config["train"]["checkpoints_to_keep"] + 1) for t in trials)
    return need, f"the checkpoints of {len(trials)} trial(s) (about {size(need / max(1, len(trials)))} each)"


def trial_retries(plan: Plan) -> int:
    """How often Tune starts a trial again whose driver was lost: as often as Ray Train restarts
    the workers of a run (the largest train.max_failures of the plan's trials)."""
    return max(int(t.config["train"]["max_failures"]) for t in plan.trials)


@dataclass
class SweepResult:
    experiment: str
    sweep_id: str
    parent_run_id: str
    failed: list[str]
    ran: int = 0  # trials this invocation ran
    kept: int = 0  # finished runs a resume kept
    closed: int = 0  # runs left RUNNING by a dead driver, marked KILLED
    reopened: int = 0  # trials that went on in such a run (and their Ray Train run folder)
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
        return _run(plan, tracker, address, resume)
    except BaseException as err:
        if not tracker.ended:
            _finish(tracker, "FAILED" if isinstance(err, Exception) else "KILLED", raising=False)
        raise


def _run(plan: Plan, tracker: SweepTracker, address: str | None, resume: bool) -> SweepResult:
    start = time.perf_counter()
    cluster = ensure_ray(address)  # before the scenes, so that missing ones render in parallel Ray tasks
    start_data_stats_actor()  # once for the sweep's trials, not once per trial
    if resume:  # what a dead driver's trials may have left reserved (orchestrator/leftovers.py)
        remove_dead_jobs_placement_groups(RAY_PLACES["dashboard"])
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
        return SweepResult(plan.spec["name"], tracker.sweep_id, tracker.parent_id, [], 0, kept, closed, timings=timings)
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
    invocation = uuid.uuid4().hex[:6]  # this driver's run of the sweep (a resume is another)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, plan=plan, storage=storage, sweep_id=tracker.sweep_id, invocation=invocation, secret=secret
        ),
        DRIVER_RESOURCES,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, **tune_config),
        run_config=tune.RunConfig(
            name=f"{plan.spec['name']}-{tracker.sweep_id}-{invocation}",
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
    ids = (plan.spec["name"], tracker.sweep_id, tracker.parent_id)
    return SweepResult(*ids, failed, count, kept, closed, len(tracker.reopened), timings)
