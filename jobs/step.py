"""One TIPS training step and what it needs, in plain PyTorch: it runs without Ray (on the GPU
machine, in benchmarks) exactly as inside the Ray Train loop."""
import math

import numpy as np
import torch

from tipslab.models.distributed import world
from tipslab.models.objective import TIPSObjective
from tipslab.models.schedules import cosine_schedule
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

NO_WEIGHT_DECAY = ("cls_token", "register_token", "pos_embed", "mask_token", "log_temperature", "queries")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite: a failure of the run, not of a worker, so never retried."""


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.split(".")[-1] in NO_WEIGHT_DECAY else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "decay": True},
            {"params": no_decay, "weight_decay": 0.0, "decay": False}]


def apply_schedules(optimizer, sched: "Schedules", step: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = sched.lr[step]
        if group.get("decay"):
            group["weight_decay"] = sched.weight_decay[step]


class Schedules:
    """Per-step learning rate, weight decay, teacher momentum and teacher temperature."""

    def __init__(self, train: dict, loss: dict):
        steps = train["steps"]
        self.lr = cosine_schedule(train["lr"], train["min_lr"], steps, train["warmup_steps"])
        self.weight_decay = cosine_schedule(train["weight_decay"], train["weight_decay_end"], steps)
        self.momentum = cosine_schedule(train["teacher_momentum"], train["teacher_momentum_end"], steps)
        warm = min(train["teacher_temp_warmup_steps"], steps)
        self.teacher_temp = np.concatenate([
            np.linspace(loss["teacher_temp"], train["teacher_temp_end"], warm),
            np.full(steps - warm, train["teacher_temp_end"]),
        ])


def tips_step(model, student: TIPSStudent, teacher: EMATeacher | None, objective: TIPSObjective, optimizer,
              batch: dict, *, teacher_temp: float, momentum: float, grad_clip: float, step: int,
              bf16: bool = False) -> dict[str, float]:
    """One TIPS step: student (maybe DDP-wrapped `model`) and teacher forwards, the objective,
    backward, clipping, the optimizer, the EMA update. Returns the loss terms and `grad_norm` as
    floats, read from the device in one transfer (one synchronisation per step, not one per term)."""
    device_type = batch["global_crop"].device.type
    # bf16 autocast on GPU for the forwards and the objective; backward runs outside it.
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16 and device_type == "cuda"):
        out = model(batch)
        teacher_out = {}
        if teacher is not None:
            masks = batch["masks"] if student.mim_head is not None else None
            teacher_out = teacher(batch["global_crop"], masks, student.cfg.loss.distill_cls)
        total, terms = objective(out, teacher_out, teacher_temp)
    stacked = torch.stack([v.detach().float() for v in terms.values()])
    values = dict(zip(terms, stacked.tolist()))
    # Every rank must agree before backward, or the ranks with finite losses would wait forever in
    # DDP's gradient all-reduce: a sum over ranks is non-finite wherever any rank's term is.
    if world()[1] > 1:
        summed = stacked.clone()
        torch.distributed.all_reduce(summed)
        checked = dict(zip(terms, summed.tolist()))
    else:
        checked = values
    for name, value in checked.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(f"non-finite loss at step {step}: term {name!r} = {value}")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip or float("inf"))
    optimizer.step()
    if teacher is not None:
        teacher.update(student, momentum)
    return {**values, "grad_norm": float(grad_norm)}
