"""One training stage's model side on a worker: the step's parts (jobs/train/step.py) built for the
stage, wrapped for DDP or sharded with FSDP2, restored from a checkpoint, and what the loop reads of
them (whole weights, digests, norms, the periodic probe, an fsdp checkpoint's shards).

The training loop (jobs/train/loop.py) imports this module only once it has started the stage's data:
the model stack (timm, which brings torchvision and torch._dynamo, and torch.distributed.checkpoint)
takes 1-2 s to import, which then overlaps Ray Data's start-up instead of coming before it.
"""

import os

import ray.train.torch
from torch.distributed.device_mesh import init_device_mesh

from tipslab.jobs.config import ExperimentConfig
from tipslab.jobs.train.parallel import (
    full_model_state_dict,
    full_parameter,
    full_state,
    load_sharded,
    param_norm,
    save_sharded,
)
from tipslab.jobs.train.state import SHARDED_DIR, TrainState
from tipslab.jobs.train.step import build_step
from tipslab.jobs.train.trace import state_digest
from tipslab.models.distributed import world


class Stage:
    """One stage's step parts on this worker (jobs/train/step.py), built from `previous`: the last
    stage's state to start from, or with `resume` the checkpoint's state to resume from; an fsdp
    checkpoint's shards are then read from `folder` (the checkpoint's folder)."""

    def __init__(
        self,
        index: int,
        name: str,
        exp: ExperimentConfig,
        device,
        previous: TrainState | None,
        resume: bool,
        folder: str | None = None,
    ):
        train = exp.train
        self.index, self.name, self.exp, self.device = index, name, exp, device
        self.sharded = train.strategy == "fsdp"
        carry = previous.weights() if previous is not None and not resume else None
        # FSDP2 in place of DDP: identical initial weights on every rank, then sharded.
        mesh = init_device_mesh(device.type, (world()[1],)) if self.sharded else None
        self.parts = build_step(exp, device, seed=train.seed, carry=carry, mesh=mesh)
        self.student, self.teacher = self.parts.student, self.parts.teacher
        if resume:
            self.parts.objective.load_state_dict(previous.objective)
            if self.sharded:
                load_sharded(self.sharded_state(), os.path.join(folder, SHARDED_DIR))
            else:
                self.student.load_state_dict(previous.student)
                self.parts.optimizer.load_state_dict(previous.optimizer)
                if self.teacher is not None:
                    self.teacher.load_state_dict(previous.teacher)
        # FSDP2 shards in place: the sharded student is its own training wrapper.
        if not self.sharded:
            self.parts.model = ray.train.torch.prepare_model(self.student)
        if train.compile:
            self.parts.compile(train.compile_mode)

    def sharded_state(self) -> dict:
        """What an fsdp checkpoint's sharded/ folder holds (parallel.save_sharded)."""
        state = {"student": self.student, "optimizer": self.parts.optimizer}
        if self.teacher is not None:
            state["teacher"] = self.teacher
        return state

    def weights(self, rank0_only: bool = False) -> dict:
        """Whole state dicts of student, teacher, objective and (ddp) optimizer. fsdp: a collective
        that gathers the weights (on every rank, or on rank 0 only with `rank0_only`: the others get
        empty dicts), never the optimizer (None: its state is in the shards)."""
        teacher = self.teacher
        if not self.sharded:
            return {
                "student": self.student.state_dict(),
                "optimizer": self.parts.optimizer.state_dict(),
                "objective": self.parts.objective.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
            }
        return {
            "student": full_model_state_dict(self.student, rank0_only),
            "optimizer": None,
            "objective": self.parts.objective.state_dict(),
            "teacher": full_model_state_dict(teacher, rank0_only) if teacher is not None else None,
        }

    def digest(self) -> str:
        """`state_digest` of the student and optimizer; fsdp: gathered whole on every rank (a
        collective, optimizer included: for the resume trace only), as `read_sharded` reads them
        from the checkpoint."""
        if not self.sharded:
            return state_digest(self.student.state_dict(), self.parts.optimizer.state_dict())
        return state_digest(*full_state(self.student, self.parts.optimizer))

    def param_norm(self) -> float:
        """The student's parameter norm (fsdp: a collective)."""
        return float(param_norm(self.student.parameters()))

    def temperature(self) -> float:
        """The contrastive temperature (fsdp: a collective)."""
        return float(full_parameter(self.student, "text.log_temperature").exp())

    def probe(self, probe) -> dict:
        """Run the periodic probe on the student. fsdp: on every rank, since each block's forward
        gathers its weights from all of them; the root's own parameters (embeddings, heads),
        which the probe uses outside the root's forward, are gathered around it."""
        if not self.sharded:
            return probe(self.student, self.device)
        self.student.unshard()
        try:
            return probe(self.student, self.device)
        finally:
            self.student.reshard()

    def save_shards(self, folder: str) -> None:
        """Write this rank's shards of student, teacher and optimizer to `folder` (a collective)."""
        save_sharded(self.sharded_state(), folder)
