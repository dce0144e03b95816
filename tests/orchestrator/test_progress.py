"""What the user sees while work runs: progress lines from the reports the sweep driver receives."""

from types import SimpleNamespace

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


# A real sweep in a terminal, its step lines arriving while it trains: tests/orchestrator/test_secrets.py.
