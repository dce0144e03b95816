"""MLflow, written by the sweep driver alone (one writer: no sqlite locks, no credentials on workers).

Layout: experiment = the spec's name; one parent run per sweep (tags: sweep identity, code version;
artifact: the resolved spec); one nested run per (variant, seed) with the flattened resolved config
as params, identity tags, `train/*` and `perf/*` metrics per step, `eval/*` metrics, and the
resolved config and eval results as artifacts.
"""
import re
import time
import uuid

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from .config import flatten
from .runtime import artifact_root

ROLE, SWEEP_ID, SPEC, SIZE = "tipslab.role", "tipslab.sweep_id", "tipslab.spec", "tipslab.size"
VARIANT, SEED, CONFIG_HASH, CHECKPOINT = "tipslab.variant", "tipslab.seed", "tipslab.config_hash", "tipslab.checkpoint"
LOGGED_PREFIXES = ("train/", "perf/", "eval/")
_SECRET_IN_URI = re.compile(r"(://[^:/@]+:)[^@]+@")


def redact(value) -> str:
    """Never log a password inside a URI."""
    return _SECRET_IN_URI.sub(r"\1***@", str(value))


def code_version() -> str:
    from importlib.metadata import version

    return version("tipslab")


class SweepTracker:
    """The parent run of one sweep and the nested runs of its trials."""

    def __init__(self, tracking_uri: str, plan):
        self.client = MlflowClient(tracking_uri)
        self.plan = plan
        name = plan.spec["name"]
        exp = self.client.get_experiment_by_name(name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            name, artifact_location=f"{artifact_root()}/{name}")
        self.sweep_id = uuid.uuid4().hex[:12]
        run = self.client.create_run(self.experiment_id, run_name=f"{name}-{plan.size}-{self.sweep_id}", tags={
            ROLE: "sweep", SWEEP_ID: self.sweep_id, SPEC: name, SIZE: plan.size,
            "tipslab.code_version": code_version(), "mlflow.note.content": plan.spec.get("title", ""),
        })
        self.parent_id = run.info.run_id
        self.client.log_dict(self.parent_id, {**plan.spec, "size": plan.size}, "spec.json")
        self.children: dict[str, str] = {}  # trial name -> run id

    def start_trial(self, trial) -> str:
        run = self.client.create_run(self.experiment_id, run_name=trial.name, tags={
            "mlflow.parentRunId": self.parent_id, ROLE: "trial", SWEEP_ID: self.sweep_id, SPEC: self.plan.spec["name"],
            SIZE: self.plan.size, VARIANT: trial.variant, SEED: str(trial.seed), CONFIG_HASH: trial.config_hash,
        })
        run_id = run.info.run_id
        params = [Param(k, redact(v)[:6000]) for k, v in flatten(trial.config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])
        self.client.log_dict(run_id, trial.config, "config.json")
        self.children[trial.name] = run_id
        return run_id

    def log_metrics(self, trial_name: str, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items()
                if k.startswith(LOGGED_PREFIXES) and isinstance(v, (int, float))]
        if rows:
            self.client.log_batch(self.children[trial_name], metrics=rows)

    def finish_trial(self, trial_name: str, status: str, result: dict | None = None) -> None:
        run_id = self.children[trial_name]
        if result:
            evals = {k: v for k, v in result.items() if k.startswith("eval/")}
            if evals:
                self.client.log_dict(run_id, evals, "eval_results.json")
            if result.get("checkpoint_uri"):
                self.client.set_tag(run_id, CHECKPOINT, result["checkpoint_uri"])
        self.client.set_terminated(run_id, status)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.parent_id, status)


class TrackingCallback(Callback):
    """A Tune callback in the sweep driver: every trial's reports go to its nested MLflow run."""

    def __init__(self, tracker: SweepTracker, trials_by_name: dict):
        self.tracker = tracker
        self.trials_by_name = trials_by_name

    @staticmethod
    def _name(trial) -> str:
        return trial.config["trial"]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.start_trial(self.trials_by_name[self._name(trial)])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("step", result.get("training_iteration", 0)))
        self.tracker.log_metrics(self._name(trial), result, step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.finish_trial(self._name(trial), "FINISHED", trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.finish_trial(self._name(trial), "FAILED", trial.last_result)
