"""A sweep's trial: Tune's trainable (`run_trial`), which pretrains with a TorchTrainer and then
evaluates the last checkpoint in a Ray task, and what it needs to know of the plan.

Every trial's driver is a fresh Ray worker process that imports this module before it can build its
trainer, so the module keeps to light imports (Ray Tune and Train, the configs, storage): no MLflow,
no model stack (timm, torchvision, torch._dynamo), which would add 2-3 s to each trial's start-up.
MLflow is written by the sweep's driver alone (orchestrator/tracking.py), and the evaluation imports
the model stack in its own task.
"""

import json
import os
import re

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tipslab.jobs import storage as run_storage
from tipslab.jobs.config import as_dict, experiment
from tipslab.jobs.redact import redact, remember_keys
from tipslab.jobs.storage import to_uri
from tipslab.jobs.train.trainer import build_trainer

from .spec import Plan, Trial


def trial_cpus(config: dict) -> float:
    """The CPUs one trial holds: its training workers' and Ray Data's budget."""
    train = config["train"]
    return train["num_workers"] * train["cpus_per_worker"] + config["data"]["cpus"]


def eval_cpus(config: dict) -> float:
    """The evaluation is one task on one node: the trial's CPUs, but never more than the largest
    node has (a paper-sized trial asks for 65 CPUs across nodes; no node has that many)."""
    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
    return min(trial_cpus(config), largest)


@ray.remote
def _evaluate(checkpoint, config, out_dir: str, secret: list[str]) -> dict:
    from tipslab.jobs.eval.evaluate import evaluate_checkpoint  # the model stack, in this task's process only

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


def run_name(plan: Plan, trial: Trial, sweep_id: str) -> str:
    """A folder-safe Ray Train run name (variant names may hold '/', '[', ',').

    A fixed trial (a row and seed of the spec) has the same name in every invocation of its sweep,
    for the same config: `--resume` after the sweep's driver died finds the run folder again, and
    Ray Train goes on from its latest checkpoint instead of step 0. A search sample's name holds
    Tune's trial id (two samples may draw the same values; a resumed search draws new ones)."""
    named = trial.config.get("train", {}).get("run_name")
    if named:
        return named  # a named run (train.run_name) resumes when it exists
    if plan.sampled:
        tail = tune.get_context().get_trial_id()
    else:
        tail = f"{sweep_id}-{trial.config_hash[:12]}"
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", f"{plan.spec['name']}-{trial.name}-{tail}")


# Written in a trial's run folder when the trial fails with an error of its own (its training,
# after Ray Train's retries, or its evaluation): Tune's retries are for a trial whose driver was lost
# with its node, and a retry of a trial that failed for good raises the same error at once. The
# file names the sweep invocation it failed in: `--resume` (a new invocation) tries the trial again.
TRIAL_FAILED_FILE = "trial_failed.json"


class TrialFailed(RuntimeError):
    """An earlier attempt of this trial failed with an error of its own (TRIAL_FAILED_FILE)."""


def run_trial(params: dict, plan: Plan, storage: str, sweep_id: str, invocation: str, secret: tuple = ()) -> None:
    """The Tune trainable: pretrain with a TorchTrainer, then evaluate its last checkpoint.

    `secret`: the config keys whose values came from the environment (names only; the driver found
    them): this process, the workers and the evaluation mask those values in what they write.
    `invocation`: this run of the sweep's driver (a resumed sweep is a new one).

    A trial's driver (this function's process) dies with its node; Tune then starts it again
    (`trial_retries`) under the same trial id, so the same run name, and Ray Train resumes the run
    from its latest checkpoint. An error raised here is the trial's own, and final in this
    invocation: it is written to TRIAL_FAILED_FILE, so that a retry after it does not train again."""
    trial = trial_resolver(plan)(params)
    remember_keys(trial.config, secret)
    name = run_name(plan, trial, sweep_id)
    folder = run_storage.join(storage, name)
    error = failed_before(folder, invocation)
    if error is not None:
        raise TrialFailed(error)
    try:
        _train_and_evaluate(trial, name, storage, secret)
    except Exception as err:
        record_failure(folder, err, invocation)
        raise


def failed_before(folder: str, invocation: str) -> str | None:
    """The error of this trial's attempt that failed of itself in `invocation`, from its run folder
    (local or s3://); None when it has not (or only in another invocation)."""
    failed_file = run_storage.join(folder, TRIAL_FAILED_FILE)
    if not run_storage.exists(failed_file):
        return None
    failed = json.loads(run_storage.read_bytes(failed_file))
    return failed["error"] if failed.get("invocation") == invocation else None


def record_failure(folder: str, err: Exception, invocation: str) -> None:
    record = {"error": f"{type(err).__name__}: {err}", "invocation": invocation}
    run_storage.write_bytes(run_storage.join(folder, TRIAL_FAILED_FILE), json.dumps(record).encode())


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
