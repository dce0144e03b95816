"""One TIPS training step and what it needs, in plain PyTorch: it runs without Ray (on the GPU
machine, in benchmarks) exactly as inside the Ray Train loop."""
import numpy as np
import torch

from tipslab.models.distributed import world
from tipslab.models.objective import TIPSObjective
from tipslab.models.schedules import cosine_schedule
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

from tipslab.jobs.train.parallel import unsharded

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


def compile_parts(teacher: EMATeacher | None, objective: TIPSObjective) -> None:
    """torch.compile, in place, what runs beside the student's forward: the teacher (its parameters,
    which the EMA update moves, stay the same objects) and the objective, whose softmaxes over
    tens of thousands of prototypes are memory-bound chains that compilation fuses."""
    if teacher is not None:
        teacher.compile()
    objective.compile()


class LossWatch:
    """Notes on the device the first step at which each loss term was not finite, so that the step
    never waits for the device; `check` reads it back and raises `NonFiniteLossError` naming the
    earliest step and its term. The training loop checks before every report and checkpoint, so no
    checkpoint ever holds the weights of a non-finite step (jobs/train/loop.py)."""

    NEVER = 2**62

    def __init__(self):
        self.names: list[str] = []
        self.first = self.value = None

    def observe(self, terms: dict[str, torch.Tensor], step: int) -> None:
        stacked = torch.stack([v.detach().float() for v in terms.values()])
        if self.first is None:
            self.names = list(terms)
            self.first = torch.full(stacked.shape, self.NEVER, dtype=torch.int64, device=stacked.device)
            self.value = torch.zeros_like(stacked)
        new = ~torch.isfinite(stacked) & (self.first == self.NEVER)
        self.first = torch.where(new, step, self.first)
        self.value = torch.where(new, stacked, self.value)

    def check(self) -> None:
        """Raise for the earliest non-finite step over every rank. A collective when there are
        several ranks: all of them call it at the same step."""
        if self.first is None:
            return
        first = self.first.clone()
        if world()[1] > 1:
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        earliest = int(first.min())
        if earliest == self.NEVER:
            return
        # The value as the rank that first saw it saw it (summed with zeros from the others).
        value = torch.where(self.first == first, self.value, torch.zeros_like(self.value))
        if world()[1] > 1:
            torch.distributed.all_reduce(value)
        index = first.tolist().index(earliest)  # the first term in order: the specific one, not `loss`
        raise NonFiniteLossError(f"non-finite loss at step {earliest}: term {self.names[index]!r} = "
                                 f"{value[index].item()}")


def tips_step(model, student: TIPSStudent, teacher: EMATeacher | None, objective: TIPSObjective, optimizer,
              batch: dict, *, teacher_temp: float, momentum: float, grad_clip: float, step: int,
              bf16: bool = False, watch: LossWatch | None = None, marks=None) -> dict[str, torch.Tensor]:
    """One TIPS step: student (maybe DDP-wrapped `model`) and teacher forwards, the objective,
    backward, clipping, the optimizer, the EMA update. Returns the loss terms and `grad_norm` as
    0-dim tensors on the device: nothing here waits for the device (the caller reads the values when
    it logs them); `watch` notes a non-finite term for a later `check`. `marks(name)` is called after
    each component (student_fwd, teacher_fwd, losses, backward, optimizer, ema): jobs/bench/step.py times
    them."""
    mark = marks or (lambda name: None)
    device_type = batch["global_crop"].device.type
    # bf16 autocast on GPU for the forwards and the objective; backward runs outside it.
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16 and device_type == "cuda"):
        out = model(batch)
        mark("student_fwd")
        teacher_out = {}
        if teacher is not None:
            masks = batch["masks"] if student.mim_head is not None else None
            teacher_out = teacher(batch["global_crop"], masks, student.cfg.loss.distill_cls)
        mark("teacher_fwd")
        total, terms = objective(out, teacher_out, teacher_temp)
    values = {k: v.detach() for k, v in terms.items()}
    if watch is not None:
        watch.observe(values, step)
    mark("losses")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    mark("backward")
    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip or float("inf"))
    optimizer.step()
    mark("optimizer")
    if teacher is not None:
        teacher.update(student, momentum)
    mark("ema")
    # FSDP2 returns a replicated DTensor: its local value is the whole norm, and plain from here on.
    return {**values, "grad_norm": unsharded(grad_norm).detach()}
