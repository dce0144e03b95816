"""Where a training worker's start-up goes, reported once with its first report (rank 0's is kept).

A trial's fixed cost is the time before its first step; `StartupClock` splits it, on wall clocks,
into phases named by where each ends:

- `perf/startup/workers_s`: from the run's launch (when its trainer was built, in the trial's driver
  or the `tipslab train` process) to the start of this worker's process: Ray Train's controller,
  the placement of the worker group, the process's own start. Left out where the run resumes from
  a checkpoint (its launch was before the failure); taken across nodes when the driver and the
  worker are on different ones (their clocks' skew adds to it).
- `perf/startup/worker_setup_s`: from the process's start to the training function's entry: Ray's
  set-up of the worker, the imports of the loop (torch, Ray Data, the data pipeline), the process
  group.
- `perf/startup/model_s`: to the first stage's model, teacher and optimizer built: the stage's data
  started, the model stack imported (timm, torchvision, torch._dynamo: after the data's start, so that the
  two overlap), a checkpoint read where the run resumes, the model wrapped for DDP or sharded for FSDP.
- `perf/startup/first_batch_s`: to the first batch in hand: Ray Data's start-up (the views' workers,
  which import torch, build the views and read their first rows) less what overlapped the model's
  build.
- `perf/startup/first_step_s`: to the first report: the steps before it (`train.log_every` of them;
  the first one's compilation, with train.compile) and the report's own collectives.

A worker that resumes from a checkpoint adds `train/resumed_from_step` (the checkpoint's step) to
the same report: in MLflow, the step at which a trial went on after a failure or a resumed sweep.

`tipslab bench trial` prints them beside Ray's floor (a bare TorchTrainer).
"""

import time

import psutil

PHASES = ("workers", "worker_setup", "model", "first_batch", "first_step")


class StartupClock:
    """Marks of one worker's start-up (time.time()); `launched`: the trial's launch, or None."""

    def __init__(self, launched: float | None = None):
        self.marks = {"launched": launched, "workers": psutil.Process().create_time(), "worker_setup": time.time()}
        self.reported = False
        self.resumed_from: int | None = None

    def resumed(self, step: int) -> None:
        """The run resumes from a checkpoint of `step`: its launch was before an earlier start."""
        self.marks["launched"] = None
        self.resumed_from = step

    def mark(self, phase: str) -> None:
        """The end of `phase` (one of PHASES), now; a phase already ended keeps its first mark."""
        if phase not in PHASES:
            raise ValueError(f"unknown start-up phase {phase!r} (one of {', '.join(PHASES)})")
        self.marks.setdefault(phase, time.time())

    def metrics(self) -> dict:
        """The phases' durations as `perf/startup/<phase>_s`, the first time it is asked (the first
        report), ending `first_step` now; {} afterwards. A phase whose start is unknown is left out."""
        if self.reported:
            return {}
        self.reported = True
        self.mark("first_step")
        starts = ("launched", *PHASES)
        out = {}
        for start, phase in zip(starts, PHASES):
            begin, end = self.marks.get(start), self.marks.get(phase)
            if begin is not None and end is not None:
                out[f"perf/startup/{phase}_s"] = max(0.0, end - begin)
        if self.resumed_from is not None:
            out["train/resumed_from_step"] = self.resumed_from
        return out
