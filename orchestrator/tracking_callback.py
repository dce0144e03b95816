"""The Tune callback of a sweep's driver: every trial's events and reports go to its MLflow run
through the sweep's tracker (orchestrator/tracking.py)."""

import sys

from ray.tune import Callback

from tipslab.jobs.redact import redact

from .tracking import SweepTracker


class TrackingCallback(Callback):
    """A Tune callback in the sweep driver: every trial's reports go to its nested MLflow run.

    A write the store refuses for good is told and counted (`SweepTracker.finish` names it at the
    end), never raised: in a Tune callback it would stop every trial."""

    def __init__(self, tracker: SweepTracker, resolve):
        self.tracker = tracker
        self.resolve = resolve  # Tune's trial config -> our Trial

    def _guarded(self, what: str, write, *args) -> None:
        try:
            write(*args)
        except Exception as err:
            line = f"{what}: {type(err).__name__}: {redact(str(err).splitlines()[0] if str(err) else '')[:200]}"
            self.tracker.client.dropped.append(line)
            print(f"tracking: not written, training goes on: {line}", file=sys.stderr, flush=True)

    def __getstate__(self):
        """Tune pickles its callbacks into `tuner.pkl` beside the runs; this one holds the tracking
        URI (with its password) and the spec: none of it goes there (a resume reads MLflow)."""
        return {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self._guarded("start of a trial run", self.tracker.start_trial, self.resolve(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("step", result.get("training_iteration", 0)))
        name = self.resolve(trial.config).name
        self._guarded(f"metrics of {name} at step {step}", self.tracker.log_metrics, name, result, step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        name = self.resolve(trial.config).name
        self._guarded(f"end of {name}", self.tracker.finish_trial, name, "FINISHED", trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        name = self.resolve(trial.config).name
        self._guarded(f"end of {name}", self.tracker.finish_trial, name, "FAILED", trial.last_result)
