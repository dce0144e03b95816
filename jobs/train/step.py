"""One TIPS training step and its parts, built one way, in plain PyTorch: it runs without Ray (on
the GPU machine, in benchmarks) exactly as inside the Ray Train loop."""

from dataclasses import dataclass, field

import numpy as np
import torch

from tipslab.jobs.config import TrainConfig, experiment
from tipslab.jobs.train.parallel import shard_model, unsharded
from tipslab.jobs.train.stages import carry_weights
from tipslab.jobs.train.state import NonFiniteLossError
from tipslab.models.checkpoint import tips_config
from tipslab.models.config import LossConfig
from tipslab.models.distributed import world
from tipslab.models.objective import TIPSObjective
from tipslab.models.schedules import cosine_schedule
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

NO_WEIGHT_DECAY = ("cls_token", "register_token", "pos_embed", "mask_token", "log_temperature", "queries")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.split(".")[-1] in NO_WEIGHT_DECAY else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "decay": True},
        {"params": no_decay, "weight_decay": 0.0, "decay": False},
    ]


def apply_schedules(optimizer, sched: "Schedules", step: int) -> None:
    for group in optimizer.param_groups:  # plain floats: a checkpoint holds plain values only
        group["lr"] = float(sched.lr[step])
        if group.get("decay"):
            group["weight_decay"] = float(sched.weight_decay[step])


class Schedules:
    """Per-step learning rate, weight decay, teacher momentum and teacher temperature."""

    def __init__(self, train: TrainConfig, loss: LossConfig):
        steps = train.steps
        self.lr = cosine_schedule(train.lr, train.min_lr, steps, train.lr_warmup())
        self.weight_decay = cosine_schedule(train.weight_decay, train.weight_decay_end, steps)
        self.momentum = cosine_schedule(train.teacher_momentum, train.teacher_momentum_end, steps)
        warm = train.teacher_temp_warmup()
        self.teacher_temp = np.concatenate(
            [
                np.linspace(loss.teacher_temp, train.teacher_temp_end, warm),
                np.full(steps - warm, train.teacher_temp_end),
            ]
        )


def compile_parts(teacher: EMATeacher | None, objective: TIPSObjective, mode: str = "default") -> None:
    """torch.compile, in place and in `mode` (train.compile_mode), what runs beside the student's
    forward: the teacher (its parameters, which the EMA update moves, stay the same objects) and the
    objective, whose softmaxes over tens of thousands of prototypes are memory-bound chains that
    compilation fuses."""
    if teacher is not None:
        teacher.compile(mode=mode)
    objective.compile(mode=mode)


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
        raise NonFiniteLossError(
            f"non-finite loss at step {earliest}: term {self.names[index]!r} = {value[index].item()}"
        )


@dataclass
class StepParts:
    """Everything one TIPS step touches: the student (and `model`, the wrapper its forward runs
    through: DDP, torch.compile, or the student itself), the EMA teacher (None when no loss term
    needs one), the objective, the optimizer, the per-step schedules and the non-finite watch.
    `build_step` makes them; the training loop, `tipslab bench step` and the Ray Train overhead
    benchmark all step through them, so what is benchmarked is what is trained."""

    student: TIPSStudent
    objective: TIPSObjective
    teacher: EMATeacher | None
    optimizer: torch.optim.Optimizer
    sched: "Schedules"
    grad_clip: float
    model: torch.nn.Module | None = None
    watch: LossWatch = field(default_factory=LossWatch)
    bf16: bool = True  # bf16 autocast where the batch is on cuda (never on cpu)

    def __post_init__(self):
        self.model = self.model or self.student

    def step(self, batch: dict, stage_step: int, step: int, marks=None) -> dict[str, torch.Tensor]:
        """The schedules at `stage_step`, then one `tips_step`; `step` (over all stages) and
        `stage_step` count the steps done before this one, from 0."""
        apply_schedules(self.optimizer, self.sched, stage_step)
        return tips_step(
            self,
            batch,
            teacher_temp=float(self.sched.teacher_temp[stage_step]),
            momentum=float(self.sched.momentum[stage_step]),
            step=step + 1,  # as the reports number it: the first step is step 1
            marks=marks,
        )

    def compile(self, mode: str = "default") -> None:
        """torch.compile the student's forward (through its wrapper), the teacher and the objective,
        in torch.compile's `mode` (train.compile_mode)."""
        self.model = torch.compile(self.model, mode=mode)
        compile_parts(self.teacher, self.objective, mode)


def build_step(exp, device, *, seed: int, carry: dict | None = None, mesh=None, fused: bool | None = None) -> StepParts:
    """The parts of one step for experiment `exp` on `device`: the student initialised from `seed`
    (the same on every rank), then `carry` (a last stage's whole "student", "objective" and
    "teacher" state dicts) loaded into it; the teacher a copy of the student; with `mesh`, student
    and teacher sharded by FSDP2 (jobs/train/parallel.py); then AdamW over what this rank holds
    (fused on cuda unless `fused` says otherwise) and the schedules over `train.steps`."""
    exp = experiment(exp)
    train = exp.train
    device = torch.device(device)
    torch.manual_seed(seed)
    cfg = tips_config(exp)
    student = TIPSStudent(cfg).to(device)  # before the optimizer and any restored state
    student.vision.recompute = student.text.recompute = train.activation_checkpointing
    objective = TIPSObjective(cfg).to(device)
    if carry is not None:
        carry_weights(student, carry["student"])
        carry_weights(objective, carry["objective"])
    teacher = None
    if objective.needs_teacher:
        teacher = EMATeacher(student).to(device)  # a copy of the student's current weights
        if carry is not None and carry.get("teacher") is not None:
            carry_weights(teacher, carry["teacher"])
    if mesh is not None:  # the teacher sharded the same way, so that its EMA update stays local
        shard_model(student, mesh)
        if teacher is not None:
            shard_model(teacher, mesh)
    fused = device.type == "cuda" if fused is None else fused
    optimizer = torch.optim.AdamW(param_groups(student, train.weight_decay), lr=train.lr, fused=fused)
    return StepParts(student, objective, teacher, optimizer, Schedules(train, exp.loss), train.grad_clip)


def tips_step(
    parts: StepParts, batch: dict, *, teacher_temp: float, momentum: float, step: int, marks=None
) -> dict[str, torch.Tensor]:
    """One TIPS step, number `step` (as reports number them): student (through `parts.model`) and
    teacher forwards, the objective, backward, clipping, the optimizer, the EMA update. Returns the
    loss terms and `grad_norm` as 0-dim tensors on the device: nothing here waits for the device (the
    caller reads the values when it logs them); `parts.watch` notes a non-finite term for a later
    `check`. `marks(name)` is called after each component (student_fwd, teacher_fwd, losses,
    backward, optimizer, ema): jobs/bench/step.py times them."""
    mark = marks or (lambda name: None)
    student, teacher = parts.student, parts.teacher
    device_type = batch["global_crop"].device.type
    # bf16 autocast on GPU for the forwards and the objective; backward runs outside it.
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=parts.bf16 and device_type == "cuda"):
        out = parts.model(batch)
        mark("student_fwd")
        teacher_out = {}
        if teacher is not None:
            masks = batch["masks"] if student.mim_head is not None else None
            teacher_out = teacher(batch["global_crop"], masks, student.cfg.loss.distill_cls)
        mark("teacher_fwd")
        total, terms = parts.objective(out, teacher_out, teacher_temp)
    values = {k: v.detach() for k, v in terms.items()}
    parts.watch.observe(values, step)
    mark("losses")
    parts.optimizer.zero_grad(set_to_none=True)
    total.backward()
    mark("backward")
    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), parts.grad_clip or float("inf"))
    parts.optimizer.step()
    mark("optimizer")
    if teacher is not None:
        teacher.update(student, momentum)
    mark("ema")
    # FSDP2 returns a replicated DTensor: its local value is the whole norm, and plain from here on.
    return {**values, "grad_norm": unsharded(grad_norm).detach()}
