"""The phases of a training worker's start-up (jobs/train/startup.py) and the first block asked for
early (jobs/data/pipeline/batches.py `EpochBatches.start`)."""

import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from tipslab.jobs.data.pipeline.batches import Ahead, EpochBatches
from tipslab.jobs.train.startup import PHASES, StartupClock


def test_the_phases_follow_one_another_from_the_launch_and_are_reported_once():
    launched = psutil.Process().create_time() - 5.0  # the process started after its launch
    clock = StartupClock(launched)
    clock.mark("model")
    time.sleep(0.05)
    clock.mark("first_batch")
    clock.mark("model")  # a later stage's model: the first mark stays
    metrics = clock.metrics()
    assert set(metrics) == {f"perf/startup/{p}_s" for p in PHASES}
    assert metrics["perf/startup/workers_s"] == pytest.approx(5.0)
    assert metrics["perf/startup/first_batch_s"] >= 0.05
    # The phases add up to the launch-to-report time.
    assert sum(metrics.values()) == pytest.approx(time.time() - launched, abs=0.05)
    assert clock.metrics() == {}


def test_a_resumed_run_leaves_out_the_launch_and_a_phase_not_reached():
    clock = StartupClock(time.time())
    clock.resumed(40)
    clock.mark("model")
    # No launch, and a phase whose start was not marked (first_step starts at first_batch): left out;
    # the checkpoint's step instead.
    metrics = clock.metrics()
    assert set(metrics) == {"perf/startup/worker_setup_s", "perf/startup/model_s", "train/resumed_from_step"}
    assert metrics["train/resumed_from_step"] == 40
    with pytest.raises(ValueError, match="unknown start-up phase 'warmup'"):
        clock.mark("warmup")


def blocks(gate: threading.Event, fetched: list):
    for e in (0, 0, 1):
        gate.wait()
        fetched.append(threading.current_thread().name)
        yield {"epoch": np.array([e, e]), "x": np.arange(2)}


def test_the_blocks_are_taken_in_a_thread_before_they_are_asked_for():
    gate, fetched = threading.Event(), []
    batches = EpochBatches(blocks(gate, fetched), batch_size=4).start(ahead=2)
    gate.set()
    deadline = time.time() + 5
    while len(fetched) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert fetched == ["blocks-ahead"] * 3  # before any next(): two waiting, the third ready to go
    batch = batches.next(0, lambda rows: None)
    assert batch["x"].tolist() == [0, 1, 0, 1]
    assert batches.next(0, lambda rows: None) is None and batches.next(1, lambda rows: None) is None
    assert batches.next(1, lambda rows: None) is None  # past the end: still none


def test_a_block_is_handed_on_as_soon_as_it_has_come_not_when_the_next_has():
    # Ray Data's own prefetch_batches holds a block back until the next ones have come.
    first_taken = threading.Event()

    def slow():
        yield {"epoch": np.array([0, 0]), "x": np.arange(2)}
        assert first_taken.wait(5)  # the next block comes only once the first is taken
        yield {"epoch": np.array([0, 0]), "x": np.arange(2, 4)}

    ahead = Ahead(slow(), depth=2)
    assert next(ahead)["x"].tolist() == [0, 1]
    first_taken.set()
    assert next(ahead)["x"].tolist() == [2, 3]
    with pytest.raises(StopIteration):
        next(ahead)


def test_an_error_of_the_blocks_is_raised_by_the_batch_that_needed_them():
    def failing():
        raise OSError("shard s3://b/x.parquet unreadable")
        yield

    batches = EpochBatches(failing(), batch_size=2).start()
    with pytest.raises(OSError, match="unreadable"):
        batches.next(0, lambda rows: None)
    assert batches.next(0, lambda rows: None) is None  # raised once; then no more blocks


def test_a_dropped_look_ahead_stops_taking_blocks():
    taken = []

    def endless():
        while True:
            taken.append(1)
            yield {"epoch": np.array([0]), "x": np.arange(1)}

    before = set(threading.enumerate())
    ahead = Ahead(endless(), depth=1)
    next(ahead)
    [thread] = [t for t in threading.enumerate() if t not in before and t.name == "blocks-ahead"]
    del ahead
    thread.join(5)
    assert not thread.is_alive() and len(taken) <= 4  # one handed on, one waiting, one held when stopped


def test_a_worker_starts_its_data_before_it_imports_the_model_stack():
    # A training worker imports the loop to run it (the training function's module, trainer.py),
    # and only once the stage's data is started does it import the model stack (stage_parts.py):
    # timm (with torchvision and torch._dynamo) and torch.distributed.checkpoint, 1-2 s, then
    # overlap Ray Data's start-up.
    unwanted = ["timm", "torchvision", "torch._dynamo", "torch.distributed.checkpoint", "tipslab.models.tips"]
    loaded = f"print([m for m in {unwanted} if m in sys.modules])"
    code = f"import sys, tipslab.jobs.train.trainer; {loaded}; import tipslab.jobs.train.stage_parts; {loaded}"
    light, heavy = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")[:2]
    assert light == "[]"
    assert heavy != "[]"  # the names above are what the model stack brings: the check can fail
