"""MLflow, written by the sweep driver alone (one writer: no sqlite locks, no credentials on workers).

Layout: experiment = the spec's name; one parent run per sweep (tags: sweep identity, code version;
artifact: the resolved spec); one nested run per (variant, seed) with the flattened resolved config
as params, identity tags (variant, seed, each axis value, config hash), the shard manifest's content
hash and the tokenizer file's sha256 as its input datasets, `train/*` and `perf/*` metrics per step,
`eval/*` metrics, and the resolved config and eval results as artifacts. A resumed sweep reuses its
parent run: MLflow is the record of what is done; a trial that was running when its driver died
goes on in its run, and what its run lacks comes from its checkpoint's `reports.jsonl`. The parent
run holds a lease its live driver renews (orchestrator/lease.py), so that a second driver on the
same sweep refuses instead of closing the first one's runs. Writes go through a store that retries
and, during training, holds them in memory while the store is away (orchestrator/tracking_store.py):
tracking trouble never stops a training run.

Made for comparing ablations in MLflow's UI: experiments are of the kind "custom model development"
(not GenAI); every run carries its git commit and a dirty flag; a schedule value that never changes
in a run (`train/stage` of a one-stage run, a fixed temperature) becomes a param instead of a flat
chart; the bad-row counters are metrics and a final tag; the parent run holds the driver machine's
system metrics, and, when the sweep ends, its table (md, html) and report.
"""

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mlflow.entities import Metric, Param

from tipslab.dashboards.store import use_store_artifacts
from tipslab.jobs import storage as run_storage
from tipslab.jobs.redact import redact, redact_name, scrub, secret_key
from tipslab.jobs.train.state import REPORTS_FILE, parse_reports

from . import lease
from .config import flatten
from .recipe import format_recipe, recipe
from .run_context import (
    PROTOCOLS,
    code_version,
    git_tags,
    read_protocols,
    system_metrics,
    tag_protocols,
)
from .run_inputs import log_run_inputs
from .run_tags import (
    AXIS,
    BAD_ROWS,
    CHECKPOINT,
    CLOSED_BY,
    CONFIG_HASH,
    ROLE,
    SEED,
    SIZE,
    SPEC,
    SWEEP_ID,
    TRAIN_RUN,
    VARIANT,
    VIEW_TAG,
    comparison_view,
    experiment_id,
)
from .runtime import storage_path
from .tracking_store import TrackingStore
from .trial import run_name

use_store_artifacts()  # this process reads and writes `mlflow-artifacts:/` URIs in the store's folder

LOGGED_PREFIXES = ("train/", "perf/", "eval/", "data/")
# Values that are constant over a stage: held back until they change, so that a run in which they
# never change shows them as params (its value), not as flat one-line charts.
HELD = ("train/stage", "train/lr", "train/weight_decay", "train/temperature", "train/teacher_momentum")


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


class SweepTracker:
    """The parent run of one sweep and the nested runs of its trials."""

    def __init__(self, tracking_uri: str, plan, resume: bool = False, monitor: bool = True):
        self.client = TrackingStore(tracking_uri)  # before training: a store that stays away is a UserError
        self.plan = plan
        name = plan.spec["name"]
        self.experiment_id = experiment_id(self.client, name)
        self.git = git_tags()
        self.children: dict[str, str] = {}  # trial name -> run id
        self.done: dict[str, object] = {}  # trial name -> its FINISHED run (kept on resume)
        self.closed: list[str] = []  # run ids left RUNNING by a dead driver, now KILLED
        self.reopenable: dict[str, object] = {}  # trial name -> its newest run a resume closed
        self.reopened: list[str] = []  # run ids of those that trials went on in
        self.logged_step: dict[str, int] = {}  # trial name -> the last training step in its run
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
                    **self.git,
                },
            )
            self.parent_id = run.info.run_id
            self.lease = lease.Lease(self.client, tracking_uri, self.parent_id)
            self.lease.take(self.describe())
        else:
            self.sweep_id, self.parent_id = parent.data.tags[SWEEP_ID], parent.info.run_id
            held = lease.holder(parent)
            if held is not None and not held.expired():
                raise lease.refuse(self.describe(), held)  # before anything of the live driver's is touched
            self.lease = lease.Lease(self.client, tracking_uri, self.parent_id)
            self.lease.take(self.describe(), settle=True)
            self.client.update_run(self.parent_id, status="RUNNING")
            self.client.set_tag(self.parent_id, "tipslab.code_version", code_version())
            for key, value in self.git.items():  # the code of this (resumed) invocation
                self.client.set_tag(self.parent_id, key, value)
            self._take_over_children()
        # The spec as resolved now: a resume that added rows or seeds makes the table grow.
        self.client.log_dict(self.parent_id, scrub({**plan.spec, "size": plan.size}), "spec.json")
        card = recipe(plan)  # where each setting of each row comes from (orchestrator/recipe.py)
        self.client.log_dict(self.parent_id, scrub(card), "recipe.json")
        self.client.log_text(self.parent_id, redact(format_recipe(card)), "recipe.md")
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, json.dumps(comparison_view(plan.spec)))
        self.started: dict[str, float] = {}
        self.held: dict[str, dict[str, Metric]] = {}  # trial -> HELD key -> its first, unchanged value
        self.bad: dict[str, tuple[int, int]] = {}  # trial -> (bad rows, rows seen), the latest report
        # System metrics on the parent run: they measure a machine, not a trial (concurrent trials
        # share it). They come from the driver's machine alone: on a cluster, the head node, not
        # the workers that train (those are in Ray's dashboard).
        self.monitor = system_metrics(self.parent_id, tracking_uri, resume=parent is not None) if monitor else None
        self.ended = False
        self.client.buffering = True  # from here on, training runs: writes wait rather than fail

    def describe(self) -> str:
        return f"sweep {self.sweep_id} of {self.plan.spec['name']} (size {self.plan.size})"

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks, and so this tracker: the system-metrics monitor (a thread of
        this process) stays behind."""
        return {**self.__dict__, "monitor": None}

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
                self.client.set_tag(run.info.run_id, CLOSED_BY, "resume (its sweep driver had died)")
                self.client.set_terminated(run.info.run_id, "KILLED")
                self.closed.append(run.info.run_id)
                self.reopenable.setdefault(run.info.run_name, run)
            elif run.info.status == "FINISHED":
                self.done.setdefault(run.info.run_name, run)
            elif run.info.status == "KILLED" and CLOSED_BY in run.data.tags:
                self.reopenable.setdefault(run.info.run_name, run)

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
        """The trial's run, created at its first start; a trial started again (Tune retries one whose
        driver was lost) goes on in the run it has, and so does a trial of a resumed sweep whose
        run a resume closed, when it trains in the same Ray Train run folder (the same sweep and
        config hash): its training goes on from that folder's latest checkpoint."""
        if trial.name in self.children:
            self.started[trial.name] = time.time()
            return self.children[trial.name]
        train_run = None if self.plan.sampled else run_name(self.plan, trial, self.sweep_id)
        earlier = self.reopenable.pop(trial.name, None)
        if train_run is not None and earlier is not None and earlier.data.tags.get(TRAIN_RUN) == train_run:
            run_id = earlier.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.delete_tag(run_id, CLOSED_BY)
            self.reopened.append(run_id)
            history = self.client.get_metric_history(run_id, "train/loss")
            self.logged_step[trial.name] = max((m.step for m in history), default=-1)
            if not earlier.inputs.dataset_inputs:  # its driver died before the run was described
                self._describe(run_id, trial)
        else:
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
                **({TRAIN_RUN: train_run} if train_run else {}),
                **self.git,
            }
            tags = {redact_name(k): redact(v) for k, v in tags.items()}
            run_id = self.client.create_run(self.experiment_id, run_name=redact(trial.name), tags=tags).info.run_id
            self._describe(run_id, trial)
        self.children[trial.name] = run_id
        if train_run is not None:  # a folder with checkpoints: a run that goes on (a new one: a retried failure)
            self._catch_up(trial.name, train_run)
        self.started[trial.name] = time.time()
        return run_id

    def _catch_up(self, trial_name: str, train_run: str) -> None:
        """Log the reports of the trial's latest checkpoint that its MLflow run lacks: those that
        waited in a dead driver's memory (the store was away, even for the run's creation) or
        were on their way to it, or all of them into a new run of a trial tried again."""
        folder = run_storage.join(storage_path(), train_run)
        for name in reversed([n for n in run_storage.list_dirs(folder) if n.startswith("checkpoint_")]):
            path = run_storage.join(folder, name, REPORTS_FILE)
            if run_storage.exists(path):
                for report in parse_reports(run_storage.read_bytes(path).decode()):
                    self.log_metrics(trial_name, report, int(report.get("step", 0)))
                return

    def _describe(self, run_id: str, trial) -> None:
        """The trial's config as params and `config.json`, and its inputs (last)."""
        params = [Param(k, redact(v)[:6000]) for k, v in flatten(trial.config).items() if not secret_key(k)]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i : i + 100])
        self.client.log_dict(run_id, scrub(trial.config), "config.json")
        log_run_inputs(self.client, run_id, trial.config)

    def log_metrics(self, trial_name: str, metrics: dict, step: int) -> None:
        if trial_name not in self.children:  # its start was not written (told then)
            return
        if "train/loss" in metrics:  # a training step: logged once (a run that goes on from a
            # checkpoint reports its step again, and trains again the steps after it)
            if step <= self.logged_step.get(trial_name, -1):
                return
            self.logged_step[trial_name] = step
        now = int(time.time() * 1000)
        rows = [
            Metric(redact_name(k), float(v), now, step)
            for k, v in metrics.items()
            if k.startswith(LOGGED_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if trial_name in self.started:  # the fixed cost of a trial: launch to its first report
            rows.append(Metric("perf/launch_to_first_report_s", now / 1000 - self.started.pop(trial_name), now, step))
        if "data/bad_rows" in metrics and "data/rows_seen" in metrics:
            self.bad[trial_name] = (int(metrics["data/bad_rows"]), int(metrics["data/rows_seen"]))
        rows = self._unless_constant(trial_name, rows)
        if rows:
            self.client.log_batch(self.children[trial_name], metrics=rows)

    def _unless_constant(self, trial_name: str, rows: list[Metric]) -> list[Metric]:
        """HELD keys: the first value waits; the first different one releases it and every later
        value is logged. What is still held when the trial ends becomes a param (finish_trial)."""
        held = self.held.setdefault(trial_name, {})
        out = []
        for m in rows:
            if m.key not in HELD:
                out.append(m)
            elif m.key not in held:
                held[m.key] = m
            elif held[m.key] is None:
                out.append(m)  # released: it changes in this run
            elif held[m.key].value != m.value:
                out += [held[m.key], m]
                held[m.key] = None
        return out

    def finish_trial(self, trial_name: str, status: str, result: dict | None = None) -> None:
        if trial_name not in self.children:
            return
        run_id = self.children[trial_name]
        held = self.held.pop(trial_name, {}).items()
        constants = [Param(k, _number(m.value)) for k, m in held if m is not None]
        if constants:
            self.client.log_batch(run_id, params=constants)
        if trial_name in self.bad:
            bad, seen = self.bad.pop(trial_name)
            self.client.set_tag(run_id, BAD_ROWS, f"{bad} of {seen}")
        if result:
            evals = {k: v for k, v in result.items() if k.startswith("eval/")}
            protocols = read_protocols(result["eval_dir"]) if result.get("eval_dir") else {}
            if evals:
                self.client.log_dict(
                    run_id, scrub({**evals, **({PROTOCOLS: protocols} if protocols else {})}), "eval_results.json"
                )
            tag_protocols(self.client, run_id, protocols)
            if result.get("checkpoint_uri"):
                self.client.set_tag(run_id, CHECKPOINT, redact(result["checkpoint_uri"]))
            if result.get("eval_dir"):
                self._log_eval_files(run_id, result["eval_dir"])
        self.client.set_terminated(run_id, status)

    def _log_eval_files(self, run_id: str, eval_dir: str) -> None:
        """The evaluation's `features.npz` (patch features for the report's PCA maps), when written."""
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

    def finish(self, status: str) -> str | None:
        """End the parent run, free the sweep, make the writes that waited; returns a line on what
        could not be written (None when everything was)."""
        self.ended = True
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
        self.client.set_terminated(self.parent_id, status)
        self.lease.release()
        self.client.flush()
        return self.client.unwritten()

    def log_results(self) -> None:
        """The sweep's table (table.md, table.html) and report (report/index.html and its images) on
        the parent run, read back from MLflow as `tipslab table` and `tipslab report` would; a failure
        here costs these artifacts, not the sweep (its runs are already in MLflow)."""
        from tipslab.dashboards.report import write_report
        from tipslab.dashboards.store import load_sweep
        from tipslab.dashboards.table import render

        name = self.plan.spec["name"]
        try:
            sweep = load_sweep(self.client.tracking_uri, name, self.sweep_id)
            # The spec's title may hold a value from the environment: masked like every other write.
            self.client.log_text(self.parent_id, redact(render(sweep, "md")), "table.md")
            self.client.log_text(self.parent_id, redact(render(sweep, "html")), "table.html")
            with tempfile.TemporaryDirectory(prefix="tipslab-report-") as out:
                write_report(sweep, out)
                for page in Path(out).rglob("*.html"):
                    page.write_text(redact(page.read_text()))
                self.client.log_artifacts(self.parent_id, out, "report")
        except Exception as err:  # noqa: BLE001
            print(f"sweep {name}: table/report not logged on the parent run: {err}", file=sys.stderr)
