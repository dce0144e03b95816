"""MLflow, written by the sweep driver alone (one writer: no sqlite locks, no credentials on workers).

Layout: experiment = the spec's name; one parent run per sweep (tags: sweep identity, code version;
artifact: the resolved spec); one nested run per (variant, seed) with the flattened resolved config
as params, identity tags (variant, seed, each axis value, config hash), the shard manifest's content
hash as its input dataset, `train/*` and `perf/*` metrics per step, `eval/*` metrics, and the
resolved config and eval results as artifacts. A resumed sweep reuses its parent run: MLflow is the
record of what is done.
"""

import json
import os
import time
import uuid

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from tipslab.jobs.redact import SECRET_KEY, redact, redact_name, scrub

from .config import flatten, manifest_of
from .plan import BENCH, BENCH_EXPERIMENT, DEVICE_KIND, MODEL_SIZE
from .recipe import format_recipe, recipe
from .runtime import artifact_root

ROLE, SWEEP_ID, SPEC, SIZE = "tipslab.role", "tipslab.sweep_id", "tipslab.spec", "tipslab.size"
VARIANT, SEED, CONFIG_HASH, CHECKPOINT = "tipslab.variant", "tipslab.seed", "tipslab.config_hash", "tipslab.checkpoint"
AXIS, DATA_HASH = "tipslab.axis.", "tipslab.data_hash"
LOGGED_PREFIXES = ("train/", "perf/", "eval/")


def code_version() -> str:
    from importlib.metadata import version

    return version("tipslab")


class SweepTracker:
    """The parent run of one sweep and the nested runs of its trials."""

    def __init__(self, tracking_uri: str, plan, resume: bool = False):
        self.client = MlflowClient(tracking_uri)
        self.plan = plan
        name = plan.spec["name"]
        exp = self.client.get_experiment_by_name(name)
        # A tracking server stores artifacts where it was told to; the embedded store under home.
        location = None if tracking_uri.startswith(("http://", "https://")) else f"{artifact_root()}/{name}"
        self.experiment_id = (
            exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=location)
        )
        self.children: dict[str, str] = {}  # trial name -> run id
        self.done: dict[str, object] = {}  # trial name -> its FINISHED run (kept on resume)
        self.closed: list[str] = []  # run ids left RUNNING by a dead driver, now KILLED
        parent = self._latest_parent() if resume else None
        if parent is None:
            self.sweep_id = uuid.uuid4().hex[:12]
            run = self.client.create_run(
                self.experiment_id,
                run_name=redact(f"{name}-{plan.size}-{self.sweep_id}"),
                tags={
                    ROLE: "sweep",
                    SWEEP_ID: self.sweep_id,
                    SPEC: name,
                    SIZE: plan.size,
                    "tipslab.code_version": code_version(),
                    "mlflow.note.content": redact(plan.spec.get("title", "")),
                },
            )
            self.parent_id = run.info.run_id
        else:
            self.sweep_id, self.parent_id = parent.data.tags[SWEEP_ID], parent.info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self.client.set_tag(self.parent_id, "tipslab.code_version", code_version())
            self._take_over_children()
        # The spec as resolved now: a resume that added rows or seeds makes the table grow.
        self.client.log_dict(self.parent_id, scrub({**plan.spec, "size": plan.size}), "spec.json")
        card = recipe(plan)  # where each setting of each row comes from (orchestrator/recipe.py)
        self.client.log_dict(self.parent_id, scrub(card), "recipe.json")
        self.client.log_text(self.parent_id, redact(format_recipe(card)), "recipe.md")
        self.started: dict[str, float] = {}

    def _latest_parent(self):
        query = (
            f"tags.`{ROLE}` = 'sweep' and tags.`{SPEC}` = '{self.plan.spec['name']}' "
            f"and tags.`{SIZE}` = '{self.plan.size}'"
        )
        found = self.client.search_runs(
            [self.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
        )
        return found[0] if found else None

    def _take_over_children(self) -> None:
        """Close what a dead driver left RUNNING; remember the finished runs, newest first."""
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
            order_by=["attributes.start_time DESC"],
            max_results=50000,
        )
        for run in runs:
            if run.info.status in ("RUNNING", "SCHEDULED"):
                self.client.set_tag(run.info.run_id, "tipslab.closed_by", "resume (its sweep driver had died)")
                self.client.set_terminated(run.info.run_id, "KILLED")
                self.closed.append(run.info.run_id)
            elif run.info.status == "FINISHED":
                self.done.setdefault(run.info.run_name, run)

    def is_done(self, trial) -> bool:
        """A finished run of this (variant, seed) with the same config hash exists."""
        run = self.done.get(trial.name)
        return run is not None and run.data.tags.get(CONFIG_HASH) == trial.config_hash

    def finished_samples(self, metric: str) -> list[tuple[dict, float]]:
        """(sampled values, objective) of a random/TPE search's finished runs."""
        keys = list(self.plan.search.space)
        return [
            ({k: float(r.data.tags[AXIS + k]) for k in keys}, r.data.metrics[metric])
            for r in self.done.values()
            if metric in r.data.metrics and all(AXIS + k in r.data.tags for k in keys)
        ]

    def start_trial(self, trial) -> str:
        tags = {
            "mlflow.parentRunId": self.parent_id,
            ROLE: "trial",
            SWEEP_ID: self.sweep_id,
            SPEC: self.plan.spec["name"],
            SIZE: self.plan.size,
            VARIANT: trial.variant,
            SEED: str(trial.seed),
            CONFIG_HASH: trial.config_hash,
            **{AXIS + k: str(v) for k, v in trial.tags.items()},
        }
        tags = {redact_name(k): redact(v) for k, v in tags.items()}
        run_id = self.client.create_run(self.experiment_id, run_name=redact(trial.name), tags=tags).info.run_id
        params = [Param(k, redact(v)[:6000]) for k, v in flatten(trial.config).items() if not SECRET_KEY.search(k)]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i : i + 100])
        self.client.log_dict(run_id, scrub(trial.config), "config.json")
        self._log_input(run_id, trial.config)
        self.children[trial.name] = run_id
        self.started[trial.name] = time.time()
        return run_id

    def _log_input(self, run_id: str, config: dict) -> None:
        """The training shards as the run's input dataset: digest = the manifest's content hash."""
        data = config["data"]
        manifest = manifest_of(data["root"], data["train_split"])
        if manifest is None:
            return
        digest = manifest["content_hash"]
        dataset = Dataset(
            name=redact(f"{data['source']}/{data['train_split']}"),
            digest=digest[:36],
            source_type="tipslab-shards",
            source=redact(f"{data['root']}/{data['train_split']}"),
            profile=json.dumps(
                {"content_hash": digest, "num_rows": manifest["num_rows"], "shard_source": redact(manifest["source"])}
            ),
        )
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])
        self.client.set_tag(run_id, DATA_HASH, digest)

    def log_metrics(self, trial_name: str, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        rows = [
            Metric(redact_name(k), float(v), now, step)
            for k, v in metrics.items()
            if k.startswith(LOGGED_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if trial_name in self.started:  # the fixed cost of a trial: launch to its first report
            rows.append(Metric("perf/launch_to_first_report_s", now / 1000 - self.started.pop(trial_name), now, step))
        if rows:
            self.client.log_batch(self.children[trial_name], metrics=rows)

    def finish_trial(self, trial_name: str, status: str, result: dict | None = None) -> None:
        run_id = self.children[trial_name]
        if result:
            evals = {k: v for k, v in result.items() if k.startswith("eval/")}
            if evals:
                self.client.log_dict(run_id, scrub(evals), "eval_results.json")
            if result.get("checkpoint_uri"):
                self.client.set_tag(run_id, CHECKPOINT, redact(result["checkpoint_uri"]))
            if result.get("eval_dir"):
                self._log_eval_files(run_id, result["eval_dir"])
        self.client.set_terminated(run_id, status)

    def _log_eval_files(self, run_id: str, eval_dir: str) -> None:
        """The evaluation's `features.npz` (patch features for the report's PCA maps), when written."""
        import tempfile

        import pyarrow.fs

        uri = f"{eval_dir.rstrip('/')}/features.npz"
        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else f"file://{uri}")
            with fs.open_input_stream(path) as f, tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, "features.npz")
                with open(local, "wb") as out:
                    out.write(f.read())
                self.client.log_artifact(run_id, local)
        except (OSError, ValueError):
            pass  # an evaluation that writes no features: the report says so

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.parent_id, status)


class TrackingCallback(Callback):
    """A Tune callback in the sweep driver: every trial's reports go to its nested MLflow run."""

    def __init__(self, tracker: SweepTracker, resolve):
        self.tracker = tracker
        self.resolve = resolve  # Tune's trial config -> our Trial

    def __getstate__(self):
        """Tune pickles its callbacks into `tuner.pkl` beside the runs; this one holds the tracking
        URI (with its password) and the spec: none of it goes there (a resume reads MLflow)."""
        return {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.start_trial(self.resolve(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("step", result.get("training_iteration", 0)))
        self.tracker.log_metrics(self.resolve(trial.config).name, result, step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.finish_trial(self.resolve(trial.config).name, "FINISHED", trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.finish_trial(self.resolve(trial.config).name, "FAILED", trial.last_result)


# --------------------------------------------------------------------------- outside sweeps
DEVICE = "tipslab.device"  # beside the bench tags that `tipslab plan` reads (orchestrator/plan.py)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment `name`, created (with its artifacts under the store's root) if new."""
    found = client.get_experiment_by_name(name)
    return (
        found.experiment_id if found else client.create_experiment(name, artifact_location=f"{artifact_root()}/{name}")
    )


def log_bench(tracking_uri: str, bench: str, model_size: str, result: dict, metrics: dict, params: dict) -> str:
    """One FINISHED run of `tipslab bench` in `tipslab-bench`, where `tipslab plan` reads it; returns
    its id. Metrics `bench/<bench>/*`; the result itself is its `bench.json`."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        experiment_id(client, BENCH_EXPERIMENT),
        run_name=f"{bench}-{model_size}-{result['device_kind']}",
        tags={
            BENCH: bench,
            MODEL_SIZE: model_size,
            DEVICE_KIND: result["device_kind"],
            DEVICE: result["device"],
            "tipslab.code_version": code_version(),
        },
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(redact_name(f"bench/{bench}/{k}"), float(v), now, 0) for k, v in metrics.items() if v is not None
        ],
        params=[Param(k, redact(v)[:6000]) for k, v in params.items()],
    )
    client.log_dict(run_id, scrub(result), "bench.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def append_eval(client: MlflowClient, run_id: str, metrics: dict, results_file: str, features: str | None) -> None:
    """`tipslab eval --run`: eval/* metrics at the run's last training step, its eval results file
    merged with them, and the features file (if any) beside them."""
    import tempfile

    run = client.get_run(run_id)
    step, now = int(run.data.params.get("train.steps", 0)), int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(redact_name(k), v, now, step) for k, v in metrics.items()])
    merged = {}
    with tempfile.TemporaryDirectory() as tmp:
        if any(a.path == results_file for a in client.list_artifacts(run_id)):
            with open(client.download_artifacts(run_id, results_file, tmp)) as f:
                merged = json.load(f)
    client.log_dict(run_id, scrub({**merged, **metrics}), results_file)
    if features:
        client.log_artifact(run_id, features)
