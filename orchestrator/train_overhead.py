"""What Ray Train costs per step: the tiny model's step time in a 1-worker TorchTrainer against a
plain PyTorch loop, on the same batches (the goal is within 5%). Local Ray only (the result comes back through a file).

    python -m tipslab.orchestrator.train_overhead [CONFIG] [key=value ...] [--steps 30] [--warmup 5]

Both sides run `jobs/train/step.py`'s `tips_step` on one thread over the same pre-made batches (so data
loading is out of the comparison), and the Ray side reports every `train.log_every` steps as the
training loop does. It prints one line per side and their ratio.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tipslab.jobs.data.pipeline.streaming import split_dir, views_for
from tipslab.jobs.data.pipeline.prepare import ensure_scenes
from tipslab.jobs.train.step import Schedules, apply_schedules, param_groups, tips_step
from tipslab.models.checkpoint import tips_config
from tipslab.models.objective import TIPSObjective
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

from .config import load_experiment, to_dict
from .runtime import ensure_ray, storage_path

DEFAULT_CONFIG = "ablations/base/tips_tiny.yaml"


def make_batches(exp: dict, n: int) -> list[dict]:
    """`n` batches of views from the first shard of the training split, as numpy."""
    import pyarrow.parquet as pq

    from tipslab.jobs.data.shards.format import shard_files

    size = exp["data"]["batch_size"]
    table = pq.read_table(shard_files(split_dir(exp["data"]["root"], exp["data"]["train_split"]))[0]).to_pydict()
    views, rows = views_for(exp), len(table["key"])
    out = []
    for i in range(n):
        pick = [(i * size + j) % rows for j in range(size)]
        batch = views({k: np.array([table[k][p] for p in pick], dtype=object) for k in table})
        out.append({k: v for k, v in batch.items() if v.dtype != object})
    return out


def timed_steps(exp: dict, batches: list[dict], steps: int, warmup: int, report=None) -> float:
    """Mean seconds per step after `warmup` steps."""
    train = exp["train"]
    torch.manual_seed(0)
    cfg = tips_config(exp)
    student, objective = TIPSStudent(cfg), TIPSObjective(cfg)
    teacher = EMATeacher(student) if objective.needs_teacher else None
    optimizer = torch.optim.AdamW(param_groups(student, train["weight_decay"]), lr=train["lr"])
    sched = Schedules({**train, "steps": steps + warmup}, exp["loss"])
    model = student
    if report is not None:
        import ray.train.torch

        model = ray.train.torch.prepare_model(student)
    start = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        batch = {k: torch.from_numpy(v) for k, v in batches[step % len(batches)].items()}
        apply_schedules(optimizer, sched, step)
        tips_step(model, student, teacher, objective, optimizer, batch, teacher_temp=float(sched.teacher_temp[step]),
                  momentum=float(sched.momentum[step]), grad_clip=train["grad_clip"], step=step)
        if report is not None and (step + 1) % train["log_every"] == 0:
            report({"step": step + 1})
    return (time.perf_counter() - start) / steps


def ray_loop(config: dict) -> None:
    import ray.train

    torch.set_num_threads(1)
    seconds = timed_steps(config["exp"], config["batches"], config["steps"], config["warmup"], ray.train.report)
    Path(config["out"]).write_text(str(seconds))  # Ray Train V2 keeps metrics only with checkpoints


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tipslab.orchestrator.train_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    exp = to_dict(load_experiment(args.config, args.overrides))
    ensure_scenes(exp)
    batches = make_batches(exp, 4)
    torch.set_num_threads(1)
    plain = timed_steps(exp, batches, args.steps, args.warmup)

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray()
    out = Path(tempfile.mkdtemp()) / "step_s"
    trainer = TorchTrainer(
        ray_loop, train_loop_config={"exp": exp, "batches": batches, "steps": args.steps, "warmup": args.warmup,
                                     "out": str(out)},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"train-overhead-{os.getpid()}", storage_path=storage_path()))
    trainer.fit()
    under_ray = float(out.read_text())
    print(f"plain PyTorch loop: {plain * 1000:.1f} ms/step")
    print(f"Ray Train (1 worker): {under_ray * 1000:.1f} ms/step")
    print(f"Ray Train / plain: {under_ray / plain:.3f} (goal <= 1.05); batch {exp['data']['batch_size']}, "
          f"{args.steps} steps after {args.warmup} warm-up, model {exp['model']['size']}")


if __name__ == "__main__":
    main()
