"""`tipslab bench overhead`: what Ray Train costs per step. The step time of a 1-worker TorchTrainer
against a plain PyTorch loop, on the same batches, each on one thread (the goal is within 5%).

Both sides step through the training loop's own parts (`build_step`, `StepParts.step`) over the same
pre-made batches (so data loading is out of the comparison), and the Ray side reports every
`train.log_every` steps as the training loop does.
"""

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from tipslab.jobs.config import experiment
from tipslab.jobs.data.pipeline.streaming import split_dir, views_for
from tipslab.jobs.data.shards.format import shard_files
from tipslab.jobs.train.step import build_step


def make_batches(exp, n: int) -> list[dict]:
    """`n` batches of views from the first shard of the training split, as numpy."""
    exp = experiment(exp)
    size = exp.data.batch_size
    table = pq.read_table(shard_files(split_dir(exp.data.root, exp.data.train_split))[0]).to_pydict()
    views, rows = views_for(exp), len(table["key"])
    out = []
    for i in range(n):
        pick = [(i * size + j) % rows for j in range(size)]
        batch = views({k: np.array([table[k][p] for p in pick], dtype=object) for k in table})
        out.append({k: v for k, v in batch.items() if v.dtype != object})
    return out


def timed_steps(exp, batches: list[dict], steps: int, warmup: int, report=None) -> float:
    """Mean seconds per step after `warmup` steps."""
    exp = experiment(exp)
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, steps=steps + warmup))
    parts = build_step(exp, "cpu", seed=0)
    if report is not None:
        import ray.train.torch

        parts.model = ray.train.torch.prepare_model(parts.student)
    start = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        parts.step({k: torch.from_numpy(v) for k, v in batches[step % len(batches)].items()}, step, step)
        if report is not None and (step + 1) % exp.train.log_every == 0:
            report({"step": step + 1})
    return (time.perf_counter() - start) / steps


def ray_loop(config: dict) -> None:
    import ray.train

    torch.set_num_threads(1)
    seconds = timed_steps(config["exp"], config["batches"], config["steps"], config["warmup"], ray.train.report)
    Path(config["out"]).write_text(str(seconds))  # Ray Train V2 keeps metrics only with checkpoints


def bench_overhead(exp, storage_path: str, steps: int = 30, warmup: int = 5) -> dict:
    """Seconds per step of the plain loop and under Ray Train (on the Ray instance the caller
    started; local only: the result comes back through a file), and their ratio."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    exp = experiment(exp)
    batches = make_batches(exp, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = timed_steps(exp, batches, steps, warmup)
    finally:
        torch.set_num_threads(threads)
    out = Path(tempfile.mkdtemp()) / "step_s"
    trainer = TorchTrainer(
        ray_loop,
        train_loop_config={"exp": exp, "batches": batches, "steps": steps, "warmup": warmup, "out": str(out)},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"train-overhead-{os.getpid()}", storage_path=storage_path),
    )
    trainer.fit()
    under_ray = float(out.read_text())
    return {
        "model_size": exp.model.size,
        "batch_size": exp.data.batch_size,
        "steps": steps,
        "warmup": warmup,
        "plain_step_s": plain,
        "ray_step_s": under_ray,
        "ratio": under_ray / plain,
    }
