"""Chaos (`make soak`): a 2-variant sweep on a local multi-node cluster (loopback) survives a worker
node SIGKILLed 3 times, its MLflow server restarted once, and its driver SIGKILLed once and resumed.

Each round draws its points of attack from its own seed (after the n-th checkpoint of the sweep,
counted on the run storage) and asserts: every trial finished, its step counters continuous, the
table has every (variant, seed) exactly once, no run left RUNNING. Each round prints one tally
line. `TIPSLAB_CHAOS_ROUNDS=10 make soak` (or pytest -m soak on this file) runs ten rounds.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer

from tipslab.orchestrator.localcluster import LocalCluster

pytestmark = pytest.mark.soak

TINY = REPO / "ablations" / "base" / "tips_tiny.yaml"
STEPS, EVERY = 16, 2  # 8 checkpoints a trial: the attacks fall among the first 12 of the sweep's 16
ROUNDS = int(os.environ.get("TIPSLAB_CHAOS_ROUNDS", "1"))
ROUND_TIMEOUT_S = 2400
OVERRIDES = tiny_overrides(
    **{
        "train.steps": STEPS,
        "train.checkpoint_every": EVERY,
        "train.log_every": EVERY,
        "train.checkpoints_to_keep": 50,  # none pruned: the attacks count checkpoints on the storage
        "train.max_failures": 5,
        "train.cpus_per_worker": 1,
        "data.cpus": 1,
        "data.scenes_train": 64,
        "data.scenes_probe": 16,
        "eval.probes": "[retrieval]",
    }
)
SPEC = (
    f"name: chaos\nbase: {TINY}\nvariants:\n  a: {{loss.mim_weight: 0}}\n  b: {{loss.mim_weight: 0.2}}\n"
    "baseline: a\nseeds: [0]\nresources: {max_concurrent_trials: 1}\n"
    "metrics:\n  - {key: eval/scenes/i2t_r1, header: I→T}\n"
)


def checkpoints(storage: Path) -> int:
    return len(list(storage.glob("*/checkpoint_*")))


def trainer_node(cluster: LocalCluster) -> int | None:
    """The index (in `cluster`) of the worker node that holds a live Ray Train worker, if any: a
    process titled `ray::RayTrainWorker...` whose parent (the node's raylet; Ray's workers have
    sessions of their own) is in that node's process group. (Not through Ray's state API: a test
    process can join only one token-authenticated cluster in its life.)"""
    import psutil

    groups = {proc.pid: index for index, proc in enumerate(cluster.procs) if index and proc is not None}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            title = (proc.info["cmdline"] or [""])[0]
            if title.startswith("ray::RayTrainWorker") and os.getpgid(proc.ppid()) in groups:
                return groups[os.getpgid(proc.ppid())]
        except (psutil.Error, ProcessLookupError):
            continue
    return None


def kill_a_worker_node(cluster: LocalCluster, rng: random.Random) -> tuple[int, bool]:
    """SIGKILL the node that trains (else a random worker node), then add a replacement."""
    target = trainer_node(cluster)
    hit = target is not None
    if target is None:
        target = rng.choice([i for i, p in enumerate(cluster.procs) if i and p is not None])
    cluster.kill_node(target)
    cluster.add_node()
    return target, hit


def sweep(*args, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tipslab.orchestrator.cli", "sweep", *args],
        env=env,
        cwd=REPO,
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its whole process group can be killed, as when its machine goes
    )


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_a_sweep_survives_node_loss_a_tracking_restart_and_a_killed_driver(round_, tmp_path):
    rng = random.Random(round_)
    attacks = ["node", "node", "node", "mlflow", "driver"]
    rng.shuffle(attacks)
    at = sorted(rng.sample(range(1, 13), len(attacks)))  # after the n-th checkpoint of the sweep
    home, log = tmp_path / "home", tmp_path / "driver.log"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow").start()
    done, started = [], time.monotonic()
    try:
        with LocalCluster(
            nodes=3, cpus_per_node=2, head_cpus=0, node_env={"RAY_memory_monitor_refresh_ms": "0"}
        ) as cluster:
            env = {**os.environ, **cluster.env, "TIPSLAB_HOME": str(home), "MLFLOW_TRACKING_URI": server.url}
            driver = sweep(str(spec), *OVERRIDES, env=env, log=log)
            storage = home / "ray"
            last = 0
            for attack, n in zip(attacks, at):
                # After the n-th checkpoint of the sweep and a new one since the last attack (a trial
                # restarted by the last attack trains again before the next)
                while checkpoints(storage) < max(n, last + 1):
                    assert driver.poll() is None, f"the sweep ended before attack {attack}:\n{log.read_text()[-3000:]}"
                    assert time.monotonic() - started < ROUND_TIMEOUT_S, "the round ran out of time"
                    time.sleep(0.5)
                last = checkpoints(storage)
                if attack == "node":
                    node, hit = kill_a_worker_node(cluster, rng)
                    done.append(f"node {node} {'(trainer)' if hit else '(no trainer on it)'}")
                elif attack == "mlflow":
                    server.stop()
                    time.sleep(rng.uniform(5, 20))
                    server.start()
                    done.append("mlflow restart")
                else:
                    os.killpg(driver.pid, signal.SIGKILL)
                    driver.wait()
                    driver = sweep(str(spec), *OVERRIDES, "--resume", env=env, log=log)
                    done.append("driver kill + resume")
            driver.wait(timeout=max(60, ROUND_TIMEOUT_S - (time.monotonic() - started)))
        out = log.read_text()
        assert driver.returncode == 0, out[-4000:]
        check_store(server.url, env)
    finally:
        server.stop()
    print(
        f"\nchaos round {round_}: {', '.join(done)}; every trial finished, steps continuous, "
        f"table complete, nothing RUNNING; {time.monotonic() - started:.0f} s"
    )


def check_store(url: str, env: dict) -> None:
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("chaos")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    trials = [r for r in runs if r.data.tags.get("tipslab.role") == "trial"]
    finished = [r for r in trials if r.info.status == "FINISHED"]
    assert sorted(r.info.run_name for r in finished) == ["a-seed0", "b-seed0"]
    assert {r.info.status for r in trials} <= {"FINISHED", "KILLED"}  # KILLED: closed by the resume
    for run in finished:
        steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "train/loss")})
        assert steps == list(range(EVERY, STEPS + 1, EVERY)), (run.info.run_name, steps)
        assert "eval/scenes/i2t_r1" in run.data.metrics
    table = subprocess.run(
        [sys.executable, "-m", "tipslab.orchestrator.cli", "table", "chaos", "--format", "csv"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr[-2000:]
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant,"))
    rows = [line.split(",") for line in lines[header + 1 :] if line]
    assert sorted(r[0] for r in rows) == ["a (baseline)", "b"] and all(r[3] == "1" for r in rows), json.dumps(rows)
