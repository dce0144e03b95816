"""TIPS pretraining on Ray Train: a TorchTrainer fed by the Ray Data views pipeline."""
import tempfile
import time

import numpy as np
import ray.train
import ray.train.torch
import torch

from tipslab.models.checkpoint import load_state, save_checkpoint, tips_config
from tipslab.models.distributed import all_reduce_mean
from tipslab.models.objective import TIPSObjective
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent
from tipslab.models.tokenizer import build_tokenizer

from .data.pipeline import data_execution_options, train_dataset
from .step import Schedules, apply_schedules, param_groups, tips_step


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. config: {"experiment": resolved experiment config (dict)}."""
    exp = config["experiment"]
    train = exp["train"]
    cfg = tips_config(exp)
    torch.manual_seed(train["seed"])  # identical initial weights on every rank
    device = ray.train.torch.get_device()
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()

    student = TIPSStudent(cfg).to(device)  # before the optimizer and any restored state
    objective = TIPSObjective(cfg).to(device)
    teacher = EMATeacher(student).to(device) if objective.needs_teacher else None
    optimizer = torch.optim.AdamW(param_groups(student, train["weight_decay"]), lr=train["lr"])
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = load_state(d)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        objective.load_state_dict(state["objective"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        step = state["step"]
    model = ray.train.torch.prepare_model(student)
    sched = Schedules(train, exp["loss"])
    tokenizer = build_tokenizer(exp["model"])  # travels inside every checkpoint
    shard = ray.train.get_dataset_shard("train")
    batch_size = exp["data"]["batch_size"]

    window: dict[str, list[float]] = {}
    wait_s, window_start = 0.0, time.perf_counter()
    torch.manual_seed(train["seed"] * 1000 + rank + step)  # per-rank randomness from here on
    while step < train["steps"]:
        batches = iter(shard.iter_torch_batches(batch_size=batch_size, drop_last=True, device=device))
        while step < train["steps"]:
            t0 = time.perf_counter()
            batch = next(batches, None)
            wait_s += time.perf_counter() - t0
            if batch is None:
                break  # end of epoch: start a new pass over the shard
            apply_schedules(optimizer, sched, step)
            values = tips_step(
                model, student, teacher, objective, optimizer, batch, teacher_temp=float(sched.teacher_temp[step]),
                momentum=float(sched.momentum[step]), grad_clip=train["grad_clip"], step=step)
            step += 1
            for name, value in values.items():
                window.setdefault(f"train/{name}", []).append(value)
            if step % train["log_every"] == 0 or step == train["steps"]:
                elapsed = time.perf_counter() - window_start
                n_steps = len(window["train/loss"])
                # One collective for every window mean (same keys, same order on every rank), on the
                # training device so that NCCL can reduce it too.
                names = [*window, "perf/data_wait_frac"]
                means = all_reduce_mean(torch.tensor([np.mean(v) for v in window.values()] + [wait_s / elapsed],
                                                     dtype=torch.float64, device=device))
                metrics = dict(zip(names, means.tolist()))
                metrics.update({
                    "step": step,
                    "train/lr": float(sched.lr[step - 1]),
                    "train/weight_decay": float(sched.weight_decay[step - 1]),
                    "train/temperature": float(student.text.temperature),
                    "train/teacher_momentum": float(sched.momentum[step - 1]),
                    "perf/images_per_s": n_steps * batch_size * world_size / elapsed,
                })
                save_now = step == train["steps"] or (train["checkpoint_every"] and step % train["checkpoint_every"] == 0)
                report(metrics, save_now, rank, {
                    "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "objective": objective.state_dict(),
                    "teacher": teacher.state_dict() if teacher is not None else None,
                    "step": step, "config": exp, "tokenizer": tokenizer.state(),
                } if save_now else None)
                window, wait_s, window_start = {}, 0.0, time.perf_counter()


def report(metrics: dict, save: bool, rank: int, state: dict | None) -> None:
    """Report metrics; with `save`, rank 0 attaches a checkpoint (report is a barrier for all ranks)."""
    if not save or rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def build_trainer(exp: dict, *, name: str, storage_path: str, callbacks=(), max_failures: int = 0):
    """A TorchTrainer for one experiment; `fit()` runs it and returns the Ray Train result."""
    from ray.train.torch import TorchConfig, TorchTrainer

    train = exp["train"]
    use_gpu = train["gpus_per_worker"] > 0
    resources = {"CPU": train["cpus_per_worker"]}
    if use_gpu:
        resources["GPU"] = train["gpus_per_worker"]
    return TorchTrainer(
        train_loop,
        train_loop_config={"experiment": exp},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=train["num_workers"], use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": train_dataset(exp)},
        dataset_config=ray.train.DataConfig(execution_options=data_execution_options(exp)),
    )
