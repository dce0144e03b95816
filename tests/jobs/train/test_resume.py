"""Node loss: 2 training workers on 2 nodes of a local cluster; one node is SIGKILLed after a
checkpoint, a replacement joins, and Ray Train resumes from the latest checkpoint by itself."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides

from tipslab.jobs.data.pipeline.streaming import Shard, plan_epoch, split_dir
from tipslab.jobs.data.scenes.generate import generate_scenes
from tipslab.jobs.train.trace import ROW_TRACE_ENV, state_digest
from tipslab.models.checkpoint import load_state
from tipslab.orchestrator.config import load_experiment, to_dict
from tipslab.orchestrator.localcluster import LocalCluster

BASE = REPO / "ablations" / "base" / "tips_tiny.yaml"
STEPS, EVERY, BATCH, FILE_ROWS = 24, 4, 8, 8

# The driver: its own process, connected to the local cluster; every report goes to a JSON-lines file.
DRIVER = """
import json, sys
import ray
from ray.train import UserCallback
from tipslab.jobs.train.trainer import build_trainer

exp, storage, out = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]

class Log(UserCallback):
    def after_report(self, run_context, metrics, checkpoint):
        with open(out, "a") as f:
            f.write(json.dumps({**metrics[0], "checkpoint": checkpoint.path if checkpoint else None}) + "\\n")

ray.init()
result = build_trainer(exp, name="node-loss", storage_path=storage, callbacks=[Log()],
                       resources_per_worker={"trainer": 1}).fit()
print("FINISHED", result.checkpoint.path)
"""


def reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# `make soak` (about 6 minutes on 2 shared cores, a fifth of `make test`'s time there); `make test`
# resumes from checkpoints in tests/jobs/train/test_trainer.py (a rerun, on S3) and test_trainer_fsdp.py.
@pytest.mark.soak
def test_node_loss_resumes_from_the_last_checkpoint_without_replaying_data(home, tmp_path):
    exp = to_dict(
        load_experiment(
            BASE,
            tiny_overrides(
                **{
                    "train.steps": STEPS,
                    "train.checkpoint_every": EVERY,
                    "train.log_every": 2,
                    "train.num_workers": 2,
                    "train.cpus_per_worker": 0.5,
                    "train.checkpoints_to_keep": 20,
                    "data.batch_size": BATCH,
                    "data.scenes_train": 96,
                    "data.cpus": 1,
                    "train.max_failures": 2,
                }
            ),
        )
    )
    generate_scenes(
        split_dir(exp["data"]["root"], "train"),
        96,
        split="train",
        size=exp["model"]["image_size"],
        rows_per_shard=FILE_ROWS,
        parallel=False,
    )  # 12 files, 6 per rank
    config, log, trace = tmp_path / "exp.json", tmp_path / "reports.jsonl", tmp_path / "trace"
    config.write_text(json.dumps(exp))
    trace.mkdir()
    # Ray's memory monitor kills processes when the whole machine is short of memory: on a machine
    # shared with other test runs that is not this test's doing, so it is off for these nodes.
    with LocalCluster(
        nodes=3, cpus_per_node=1, worker_resources={"trainer": 1}, node_env={"RAY_memory_monitor_refresh_ms": "0"}
    ) as cluster:
        env = {**os.environ, **cluster.env, ROW_TRACE_ENV: str(trace)}
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(config), str(home / "ray"), str(log)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 600
        while not any(r["checkpoint"] for r in reports(log)):
            assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()[-3000:]
            time.sleep(0.2)
        cluster.kill_node(1)  # one training worker's machine is gone
        killed_after = max(r["step"] for r in reports(log))
        cluster.add_node()  # a replacement, so that the group of 2 can start again
        out, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0 and "FINISHED" in out, out[-3000:]
    assert killed_after < STEPS

    history = reports(log)
    steps = [r["step"] for r in history]
    assert steps[-1] == STEPS
    # Resumed: one restart, from the checkpoint each worker read; steps continue right after it.
    events = [json.loads(line) for f in sorted(trace.glob("*.json")) for line in f.read_text().splitlines()]
    resumed = {e["resumed_at"] for e in events}
    assert len(resumed) == 1 and len(events) == 2  # both ranks of the restarted group
    start = resumed.pop()
    assert start % EVERY == 0 and 0 < start <= killed_after
    # Continuous: every logged step reported; a step reported twice was trained again after the resume,
    # or is the checkpoint's own, reported again from its report.json before the first new step.
    assert sorted(set(steps)) == list(range(2, STEPS + 1, 2))
    assert all(step >= start for step, n in Counter(steps).items() if n > 1)
    assert steps.count(start) == 2

    # The parameters and optimizer state at resume are those of the checkpoint of that step.
    checkpoint = next(r["checkpoint"] for r in history if r["step"] == start and r["checkpoint"])
    state = load_state(checkpoint)
    assert state["step"] == start and {e["digest"] for e in events} == {
        state_digest(state["student"], state["optimizer"])
    }

    # Replay: rows trained twice in the same epoch, at most one checkpoint interval plus the file
    # each rank was in the middle of.
    seen = Counter(tuple(line.split()) for f in trace.glob("*.txt") for line in f.read_text().splitlines())
    assert -1 not in {int(k) for _, k in seen}
    replayed = sum(n - 1 for n in seen.values())
    assert replayed <= EVERY * BATCH * 2 + FILE_ROWS * 2, replayed
    assert sum(seen.values()) >= STEPS * BATCH * 2


def test_each_epoch_deals_every_file_not_done_once_shuffled_by_seed_and_epoch():
    shards = [Shard(f"f{i}", 8) for i in range(10)]
    first = plan_epoch(shards, seed=0, epoch=0, world_size=3)
    dealt = [s.file for rank in first.files for s in rank]
    assert sorted(dealt) == sorted(s.file for s in shards) and [len(r) for r in first.files] == [4, 3, 3]
    assert plan_epoch(shards, 0, 0, 3) == first and plan_epoch(shards, 0, 1, 3).files != first.files
    # after a restart only the files not done are dealt, to however many ranks there are now
    done = {s.file for s in first.files[0][:2]} | {first.files[1][0].file}
    again = plan_epoch(shards, 0, 0, 2, done)
    assert sorted(s.file for r in again.files for s in r) == sorted(s.file for s in shards if s.file not in done)
    # a rank's files are done once the rows it used cover them; fewer files than ranks: shared
    assert first.done_files(0, 15) == [first.files[0][0].file] and first.done_files(0, 16) == dealt[:2]
    shared = plan_epoch(shards[:1], 0, 0, 2)
    assert shared.shared and shared.files == [[shards[0]], [shards[0]]]
    assert shared.merge_done([["f0"], []]) == set() and first.merge_done([["f1"], ["f2"], []]) == {"f1", "f2"}
