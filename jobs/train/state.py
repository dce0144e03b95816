"""The training state: what a checkpoint holds, typed, written in one place and read back in one.

A checkpoint's `model.pt` (models/checkpoint.py) holds the whole student, teacher and objective
weights (fsdp: gathered; its optimizer is in the `sharded/` folder beside it, jobs/train/parallel.py),
the optimizer (ddp), where training stands (stage, step, the data position: the epoch and the shard
files done, jobs/data/pipeline/streaming.py), every rank's RNG state, the bad-row totals, the
resolved config and the tokenizer, so that a run resumes, and an evaluation runs, from it alone.
"""

import dataclasses
import json
from dataclasses import dataclass, field

SHARDED_DIR = "sharded"  # an fsdp checkpoint's torch.distributed.checkpoint folder, beside model.pt


# Beside `model.pt`: every report of the run up to that checkpoint, a JSON object a line, the
# checkpoint's own last. A run that goes on from the checkpoint reports its last line again first (a
# report lost on its way to a trial driver that died), and a resumed sweep logs the lines its MLflow
# run lacks (orchestrator/tracking.py: writes that waited in a dead sweep driver's memory).
REPORTS_FILE = "reports.jsonl"


def reports_text(reports: list[dict]) -> str:
    return "".join(json.dumps(r, default=float) + "\n" for r in reports)


def parse_reports(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class RunStopped(RuntimeError):
    """The run stopped by itself (non-finite loss, too many bad rows); the message says where."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite: a failure of the run, not of a worker, so never retried."""


@dataclass
class DataPosition:
    """Where a rank's data stands: the epoch, and the shard files every rank finished in it."""

    epoch: int = 0
    done: list[str] = field(default_factory=list)


@dataclass
class TrainState:
    stage: int  # index into the run's stages (jobs/train/stages.py)
    stage_step: int
    step: int  # over all stages
    data: DataPosition
    student: dict  # state dicts, whole
    objective: dict
    teacher: dict | None = None
    optimizer: dict | None = None  # None for fsdp: each rank's shards are in sharded/
    rng: list = field(default_factory=list)  # every rank's torch RNG state, in rank order
    bad_rows: dict = field(default_factory=dict)  # run totals over all ranks (BAD_ROW_COLUMNS)
    config: dict = field(default_factory=dict)  # the stage's resolved experiment config
    tokenizer: dict | None = None
    sharded: str | None = None  # the sharded/ folder's name for an fsdp checkpoint

    def to_checkpoint(self) -> dict:
        """The plain dict that `model.pt` holds (evaluation reads its student, config, tokenizer)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["data"] = dataclasses.asdict(self.data)
        return out

    @classmethod
    def from_checkpoint(cls, state: dict) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in state.items() if k in names}
        return cls(**{**kept, "data": DataPosition(**state["data"])})

    def weights(self) -> dict:
        """The whole state dicts a next stage starts from (jobs/train/step.py `build_step`)."""
        return {"student": self.student, "objective": self.objective, "teacher": self.teacher}

    @property
    def strategy(self) -> str:
        return "fsdp" if self.sharded else "ddp"


def check_strategy(state: TrainState, strategy: str) -> None:
    """A stage resumes only with the strategy that wrote its checkpoint: an fsdp checkpoint's
    optimizer state is in its shards, a ddp checkpoint has none."""
    if state.strategy != strategy:
        raise RunStopped(
            f"train.strategy: the run's checkpoint was written with {state.strategy}, this run uses "
            f"{strategy!r}; resume it with train.strategy={state.strategy}"
        )
