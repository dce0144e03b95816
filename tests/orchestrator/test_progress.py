"""What the user sees while work runs: progress lines from the reports the sweep driver receives,
and, in a real terminal, `tipslab train` printing them while it trains."""

import os
import time
from types import SimpleNamespace

from terminal import in_a_terminal

from tipslab.orchestrator.progress import ProgressCallback, duration, train_line


def test_a_train_line_has_step_terms_rate_and_eta():
    result = {"step": 120, "train/loss": 3.21456, "train/clip": 3.2, "train/distill": 6.23, "train/lr": 1e-3}
    result.update({"train/grad_norm": 0.8, "perf/images_per_s": 145.2})
    line = train_line("web-seed0", result, 1500, rate=10.0)
    assert line == "web-seed0  step 120/1500 (8%)  loss 3.215 [clip 3.2 distill 6.23]  145 img/s  ETA 2m18s"
    assert train_line("r", {"step": 1, "train/loss": 1.0}, 10, None) == "r  step 1/10 (10%)  loss 1"
    slow = train_line("r", {"step": 1, "train/loss": 1.0, "perf/images_per_s": 0.43}, 10, None)
    assert slow == "r  step 1/10 (10%)  loss 1  0.43 img/s"  # a slow machine's rate is not 0
    assert [duration(s) for s in (0, 59.6, 61, 3725)] == ["0s", "1m00s", "1m01s", "1h02m"]


class Lines:
    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines += [t for t in text.split("\n") if t]

    def flush(self):
        pass


def test_the_callback_throttles_training_lines_and_keeps_the_tally():
    trials = {n: SimpleNamespace(name=n, config={"train": {"steps": 100}}) for n in ("a", "b")}
    out = Lines()
    cb = ProgressCallback(lambda config: trials[config["t"]], count=3, every=3600, stream=out)
    a, b = SimpleNamespace(config={"t": "a"}), SimpleNamespace(config={"t": "b"})
    cb.on_trial_start(0, [], a)
    for step in (10, 20, 30):  # only the first within the interval
        cb.on_trial_result(0, [], a, {"step": step, "train/loss": 2.0})
    cb.on_trial_result(0, [], a, {"step": 100, "train/loss": 1.0})  # the last step always
    cb.on_trial_result(0, [], a, {"eval/scenes/seg_miou": 20.0, "step": 100})  # not a training report
    cb.on_trial_complete(0, [], a)
    cb.on_trial_start(0, [], b)
    cb.on_trial_error(0, [], b)
    assert out.lines[0] == "a  started (trials: 0 done, 1 running, 2 pending)"
    assert out.lines[1].startswith("a  step 10/100 (10%)  loss 2")
    assert out.lines[2].startswith("a  step 100/100 (100%)") and out.lines[2].endswith("evaluating on frozen features")
    assert out.lines[3].startswith("a  finished in ") and out.lines[3].endswith(
        "(trials: 1 done, 0 running, 2 pending)"
    )
    assert out.lines[5].startswith("b  FAILED (trials: 1 done, 1 failed, 0 running, 1 pending)")
    assert len(out.lines) == 6


def test_tipslab_train_shows_its_progress_in_a_terminal_while_it_trains(tmp_path):
    """A real `tipslab train` in a pseudo-terminal: the step lines (with a loss and images/s)
    arrive while the run goes on, before its evaluation and table; Tune's own noise does not."""
    env = {**os.environ, "TIPSLAB_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    args = ["ablations/base/tips_tiny.yaml", "train.steps=12", "train.log_every=2", "data.scenes_train=64"]
    args += ["data.scenes_probe=16", "eval.probes=[retrieval]"]
    code, pieces = in_a_terminal(["train", *args], env, timeout_s=600)
    ended = time.monotonic()
    arrived = [(when, line) for when, line, _ in pieces]
    text = "\n".join(line for _, line in arrived)
    assert code == 0, text[-3000:]
    steps = [(t, line) for t, line in arrived if " step " in line and "/12 (" in line]
    assert steps, text[-3000:]
    first_time, first = steps[0]
    assert " loss " in first and " img/s" in first, first
    table = next(t for t, line in arrived if line.startswith("| tips_tiny"))
    assert first_time < table and first_time < ended - 1.0  # while it ran, not only at the end
    assert any("step 12/12 (100%)" in line for _, line in steps)
    assert "TensorBoard" not in text and "View detailed results" not in text
    assert "Token authentication" not in text and "Started a local Ray instance" not in text
