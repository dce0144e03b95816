"""What the user watching the terminal sees while a sweep runs: each trial's step out of its total,
its loss terms, images/s and ETA, from the reports the driver already receives; and the sweep's
trials done, running and pending. One line per event, at most one training line per trial every
`every` seconds, on stderr (stdout keeps the table)."""

import sys
import time
from pathlib import Path

from ray.tune import Callback

from tipslab.jobs.redact import redact

from .meter import duration

# Report keys under train/ that are settings or norms, not loss terms (train/loss is their total).
NOT_TERMS = {
    "stage",
    "stage_step",
    "lr",
    "weight_decay",
    "temperature",
    "teacher_momentum",
    "param_norm",
    "grad_norm",
    "loss",
}


def train_line(name: str, result: dict, total: int, rate: float | None) -> str:
    """`web-seed0  step 120/1500 (8%)  loss 3.214 [contrastive 3.21]  145 img/s  ETA 2m10s`."""
    step = int(result["step"])
    terms = {k[len("train/") :]: v for k, v in result.items() if k.startswith("train/") and k[6:] not in NOT_TERMS}
    parts = [f"{name}  step {step}/{total} ({100 * step / max(total, 1):.0f}%)", f"loss {result['train/loss']:.4g}"]
    if len(terms) > 1:
        parts[-1] += " [" + " ".join(f"{k} {v:.3g}" for k, v in sorted(terms.items())) + "]"
    if "perf/images_per_s" in result:
        images = result["perf/images_per_s"]
        parts.append(f"{images:.0f} img/s" if images >= 10 else f"{images:.2g} img/s")  # a slow machine's 0.4 is not 0
    if rate:
        parts.append(f"ETA {duration((total - step) / rate)}")
    return "  ".join(parts)


# How Ray words a trial's actor lost (Tune's error.txt), where an error of the trial's own code is a
# traceback under "ray::ImplicitFunc.train()".
LOST_ACTOR = ("The actor died", "actor is temporarily unavailable", "ActorDiedError", "ActorUnavailableError")


def lost_driver(error_file: str | None) -> bool:
    """Whether a trial's last failure in Tune's error file (sections "Failure # n ...") is the loss
    of its driver's process, not an error raised by the trial."""
    try:
        last = Path(error_file).read_text(errors="replace").rsplit("Failure # ", 1)[-1]
    except (OSError, TypeError):
        return False
    return any(words in last for words in LOST_ACTOR)


class ProgressCallback(Callback):
    def __init__(self, resolve, count: int, every: float = 10.0, stream=None):
        self.resolve = resolve  # Tune's trial config -> our Trial
        self.count, self.every, self.stream = count, every, stream or sys.stderr
        self.began: dict[str, float] = {}
        self.started: dict[str, tuple[float, int]] = {}  # trial -> (time, step) of its first report
        self.printed: dict[str, float] = {}
        self.done = self.failed = 0
        self.running: set[str] = set()

    def __getstate__(self):
        """Nothing of the spec goes into Tune's `tuner.pkl` (see TrackingCallback)."""
        return {}

    def say(self, line: str) -> None:
        print(redact(line), file=self.stream, flush=True)

    def tally(self) -> str:
        pending = self.count - self.done - self.failed - len(self.running)
        failed = f", {self.failed} failed" if self.failed else ""
        return f"trials: {self.done} done{failed}, {len(self.running)} running, {pending} pending"

    def on_trial_start(self, iteration, trials, trial, **info):
        name = self.resolve(trial.config).name
        self.running.add(name)
        self.began[name] = time.monotonic()
        self.say(f"{name}  started ({self.tally()})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        t = self.resolve(trial.config)
        if "train/loss" not in result or "step" not in result:
            return
        now, step = time.monotonic(), int(result["step"])
        first = self.started.setdefault(t.name, (now, step))
        total = int(t.config["train"]["steps"])
        if now - self.printed.get(t.name, -1e9) < self.every and step < total:
            return
        self.printed[t.name] = now
        rate = (step - first[1]) / (now - first[0]) if now > first[0] and step > first[1] else None
        line = train_line(t.name, result, total, rate)
        self.say(line + ("; evaluating on frozen features" if step >= total else ""))

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Tune starts a failed trial again: one whose driver was lost (its process, or its node)
        resumes from its last checkpoint; one that failed of itself fails again at once, quietly
        (orchestrator/trial.py run_trial), and its error is told then."""
        name = self.resolve(trial.config).name
        self.running.discard(name)
        if lost_driver(trial.error_file):
            self.say(f"{name}  lost its driver (its process or node died); starting it again from its last checkpoint")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finish(trial, ok=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finish(trial, ok=False)

    def finish(self, trial, ok: bool) -> None:
        name = self.resolve(trial.config).name
        self.running.discard(name)
        took = f" in {duration(time.monotonic() - self.began[name])}" if name in self.began else ""
        if ok:
            self.done += 1
            self.say(f"{name}  finished{took} ({self.tally()})")
        else:
            self.failed += 1
            self.say(f"{name}  FAILED ({self.tally()}); the error follows the sweep, the worker logs are named above")
