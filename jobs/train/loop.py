"""The TIPS training loop that runs on every Ray Train worker: stages, epochs, steps, reports.

Each rank streams its own shard files (jobs/data/pipeline/streaming.py), one dataset for the epochs
of a stage, cut into batches of one epoch each (jobs/data/pipeline/batches.py); a stage's dataset is
asked for its first block before the stage's model is built (jobs/train/stage_parts.py, whose model
stack this module imports only then), so that Ray Data's start-up (its views workers) overlaps the
imports and the build. The first report carries where the worker's start-up went
(jobs/train/startup.py). Every `train.log_every`
steps the loop reports the window's loss terms and rates, averaged over ranks in one collective;
every `train.checkpoint_every` steps and at the end of each stage it also reports a checkpoint
(jobs/train/state.py), after a collective check that no loss term went non-finite. After a worker
or node failure Ray Train restarts the worker group and the loop resumes from
`ray.train.get_checkpoint()`, the latest registered checkpoint.

`train.strategy` picks how the workers share the model. ddp: every worker holds the whole student,
teacher and optimizer (`ray.train.torch.prepare_model`), and rank 0 writes the checkpoint, one
`model.pt`. fsdp: FSDP2 (jobs/train/parallel.py) shards the student and, the same way, the EMA
teacher over the workers, each transformer block its own unit, and the optimizer holds each rank's
shards only. A checkpoint then holds, besides `model.pt`, a `sharded/` folder written with
torch.distributed.checkpoint: every rank writes its shards of student, teacher and optimizer into its
own temporary folder and reports it, and Ray Train V2 copies every rank's files into the one
checkpoint folder of that report, which it registers only once every rank has reported (so never
with some rank's shards missing). Rank 0's `model.pt` holds everything else, as with ddp, plus the
whole student and teacher weights (gathered at each checkpoint, the optimizer never), so that
evaluation, `tipslab embed` and `load_student` read it unchanged; a resume reads the shards
(torch.distributed.checkpoint reshards them if the number of workers changed).
"""

import contextlib
import os
import tempfile
import time

import ray.train
import ray.train.torch
import torch

from tipslab.jobs.config import as_dict, experiment
from tipslab.jobs.data.pipeline.batches import EpochBatches
from tipslab.jobs.data.pipeline.flow import stage_batches
from tipslab.jobs.data.pipeline.streaming import DataPlan, plan_epochs, stage_dataset, train_shards
from tipslab.jobs.data.pipeline.views import BAD_ROW_COLUMNS
from tipslab.jobs.redact import redact, scrub
from tipslab.jobs.train.cadence import Cadence
from tipslab.jobs.train.collectives import all_have, all_sum, gather
from tipslab.jobs.train.stages import stage_configs
from tipslab.jobs.train.startup import StartupClock
from tipslab.jobs.train.state import (
    REPORTS_FILE,
    SHARDED_DIR,
    DataPosition,
    RunStopped,
    TrainState,
    check_strategy,
    parse_reports,
    reports_text,
)
from tipslab.jobs.train.trace import RowTrace
from tipslab.models.checkpoint import CHECKPOINT_FILE, read_checkpoint, save_checkpoint
from tipslab.models.tokenizer import build_tokenizer


class Window:
    """One report window: the steps' values (on the device until the report reads them in one
    transfer), the bad-row counters of its batches (on the device too), its data-wait time and clock."""

    def __init__(self, device):
        self.values: dict[str, list[torch.Tensor]] = {}
        self.counters = torch.zeros(len(BAD_ROW_COLUMNS), dtype=torch.int64, device=device)
        self.wait_s, self.start = 0.0, time.perf_counter()

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.values.setdefault(f"train/{key}", []).append(value)

    def count(self, batch: dict, pop: bool = True) -> None:
        self.counters += torch.stack([(batch.pop(c) if pop else batch[c]).sum() for c in BAD_ROW_COLUMNS])


@contextlib.contextmanager
def restored_state():
    """(state, folder): the run's latest registered checkpoint, `model.pt` read (memory-mapped: an
    fsdp checkpoint's whole weights are read only where a new stage starts from them) and its
    folder, which exists until the with block ends (fsdp reads its shards there); (None, None)
    when the run has none."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        yield None, None
        return
    with checkpoint.as_directory() as d:
        path = os.path.join(d, CHECKPOINT_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tipslab checkpoint at {path}")
        state = read_checkpoint(path, mmap=True)  # data only: a crafted checkpoint runs nothing
        yield TrainState.from_checkpoint(state), d


class Loop:
    def __init__(self, exp, rank: int, world_size: int, device, clock: StartupClock | None = None):
        exp = experiment(exp)
        self.exp, self.rank, self.world_size, self.device = exp, rank, world_size, device
        self.clock = clock or StartupClock()
        self.train = exp.train
        self.tokenizer = build_tokenizer(exp.model)  # travels inside every checkpoint
        self.shards = train_shards(exp)
        self.trace = RowTrace(rank)
        self.bad = dict.fromkeys(BAD_ROW_COLUMNS, 0)  # run totals over all ranks
        self.reports: list[dict] = []  # the run's reports (rank 0's go into checkpoints: REPORTS_FILE)

    def run(self) -> None:
        stages = stage_configs(self.exp)
        with contextlib.ExitStack() as opened:
            state, folder = opened.enter_context(restored_state())
            first, step, position = 0, 0, DataPosition()
            if state is not None:
                first, step, position = state.stage, state.step, state.data
                self.bad.update(state.bad_rows)
                self.clock.resumed(step)
                self.report_again(folder)
            for index in range(first, len(stages)):
                name, stage_exp = stages[index]
                steps = stage_exp.train.steps
                here = state is not None and state.stage == index
                resume = here and state.stage_step < steps
                if here and not resume:
                    continue  # the checkpoint is this stage's last
                if resume:
                    check_strategy(state, stage_exp.train.strategy)
                stage_step = state.stage_step if resume else 0
                # The data first: Ray Data starts its workers while the model is built.
                data = self.stage_data(stage_exp, position.epoch, set(position.done), steps - stage_step)
                # The model stack's imports (timm, with torchvision and torch._dynamo: 1-2 s) come after the
                # data's start, so that they too overlap Ray Data's start-up.
                from tipslab.jobs.train.stage_parts import Stage

                stage = Stage(index, name, stage_exp, self.device, state, resume, folder)
                self.clock.mark("model")
                opened.close()  # the checkpoint's files are read
                if resume:
                    self.restore_rng(state, stage, step)
                else:
                    torch.manual_seed(self.train.seed * 1000 + self.rank + step)  # per-rank randomness
                step, position = self.run_stage(stage, stage_step, step, position, data)
                if index + 1 < len(stages):  # the next stage starts from these weights (fsdp: gathered)
                    state = TrainState(stage=index, stage_step=steps, step=step, data=position, **stage.weights())

    def report_again(self, folder: str) -> None:
        """Take the run's reports up to the checkpoint in `folder` (REPORTS_FILE) and report its own
        again (every rank: a report is a barrier; all read the same checkpoint). A checkpoint of
        older code has none: nothing."""
        path = os.path.join(folder, REPORTS_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                self.reports = parse_reports(f.read())
            if self.reports:
                ray.train.report(self.reports[-1])

    def restore_rng(self, state: TrainState, stage, step: int) -> None:
        if len(state.rng) == self.world_size:
            torch.set_rng_state(state.rng[self.rank])
        if self.trace.path:  # fsdp: a collective, on every rank alike (the variable reaches all)
            self.trace.event(resumed_at=step, stage=stage.index, digest=stage.digest())

    def run_stage(self, stage, stage_step: int, step: int, position: DataPosition, data):
        """Train `stage` from `stage_step` (the run's `step`) at data `position`, on `data`: the
        stage's first dataset (`stage_data`), already started."""
        train, steps = stage.exp.train, stage.exp.train.steps
        log, save, probing = Cadence(train.log_every), Cadence(train.checkpoint_every), Cadence(self.train.probe_every)
        probe = self.make_probe(stage)
        window = Window(self.device)
        epoch, done = position.epoch, set(position.done)
        plans, batches = data
        while stage_step < steps:
            if epoch not in plans:  # past the epochs the stage's dataset spans
                plans, batches = self.stage_data(stage.exp, epoch, done, steps - stage_step)
            plan, rows_done, epoch_steps = plans[epoch], 0, 0
            while stage_step < steps:
                batch = self.next_batch(batches, epoch, window)
                self.clock.mark("first_batch")
                # The epoch ends for every rank when one runs out: DDP needs the same step count.
                if not all_have(batch is not None, self.device):
                    if batch is not None:  # not trained on, but its bad rows were met
                        window.count(batch, pop=False)
                    break
                rows_done = rows_done + batch.pop("rows_done").sum()  # on the device: read at checkpoints
                self.trace.rows(epoch, batch.pop("key_id"))
                del batch["epoch"]
                window.count(batch)
                window.add(stage.parts.step(batch, stage_step, step))
                stage_step, step, epoch_steps = stage_step + 1, step + 1, epoch_steps + 1
                last = stage_step == steps
                if not (log.due(step, last) or save.due(step)):
                    continue
                stage.parts.watch.check()  # a collective, at the same step on every rank
                metrics = self.metrics(stage, window, stage_step, step)
                metrics.update(self.clock.metrics())  # the first report only
                if probe is not None and probing.due(step, last):
                    metrics.update(stage.probe(probe))
                now = None
                if save.due(step, last):
                    finished = plan.merge_done(gather(plan.done_files(self.rank, int(rows_done))))
                    now = DataPosition(epoch, sorted(done | finished))
                self.report(metrics, stage, stage_step, step, now)
                window = Window(self.device)
                if last:
                    return step, now
            if epoch_steps == 0 and not done:
                raise RunStopped(
                    f"data: the {stage.exp.data.train_split} split has too few rows for one "
                    f"batch of {stage.exp.data.batch_size} on each of {self.world_size} ranks"
                )
            epoch, done = epoch + 1, set()
        return step, DataPosition(epoch, sorted(done))

    def make_probe(self, stage):
        """The periodic probe (jobs/train/probe.py), where it runs: rank 0, or every rank under fsdp (its
        forwards are collectives); None when train.probe_every is 0."""
        if not self.train.probe_every or not (self.rank == 0 or stage.sharded):
            return None
        from tipslab.jobs.train.probe import PeriodicProbe

        return PeriodicProbe(stage.exp, self.tokenizer)

    def stage_data(self, exp, epoch: int, done: set[str], steps: int) -> tuple[dict[int, DataPlan], EpochBatches]:
        """({epoch: its data plan} for the epochs from `epoch` that one dataset spans, enough for
        `steps` steps of stage config `exp`, and this rank's batches of them on the device, the
        first block already asked for (EpochBatches.start))."""
        data = exp.data
        plans = plan_epochs(self.shards, exp.train.seed, epoch, self.world_size, done, data.batch_size, steps)
        ds = stage_dataset(exp, plans, self.rank, data.cpus / self.world_size)
        batches = stage_batches(ds, data.batch_size, exp.train.prefetch_batches, self.device)
        return {plan.epoch: plan for plan in plans}, batches

    def next_batch(self, batches: EpochBatches, epoch: int, window: Window) -> dict | None:
        """The next whole batch of `epoch`, or None at its end on this rank; the wait goes to the
        window. The rows not trained on (the epoch's short last batch, what is left of an epoch
        another rank finished first) have their bad rows counted."""
        t0 = time.perf_counter()
        batch = batches.next(epoch, lambda rows: window.count(rows, pop=False))
        window.wait_s += time.perf_counter() - t0
        return batch

    def metrics(self, stage, window: Window, stage_step: int, step: int) -> dict:
        """Window means of the loss terms and norms, over every rank in one collective; the bad-row
        counters summed over ranks (only rank 0's report is kept)."""
        names, elapsed = list(window.values), time.perf_counter() - window.start
        means_here = torch.stack([torch.stack(v).float().mean() for v in window.values.values()]).tolist()
        sums = all_sum(means_here + [window.wait_s / elapsed, elapsed] + window.counters.tolist(), self.device)
        means = [v / self.world_size for v in sums[: len(names) + 2]]
        for column, total in zip(BAD_ROW_COLUMNS, sums[len(names) + 2 :]):
            self.bad[column] += int(total)
        sched, data = stage.parts.sched, stage.exp.data
        if self.bad["rows_seen"] and self.bad["bad_rows"] / self.bad["rows_seen"] > data.max_bad_fraction:
            raise RunStopped(
                f"data: {self.bad['bad_rows']} of {self.bad['rows_seen']} rows seen were bad, more than "
                f"data.max_bad_fraction = {data.max_bad_fraction} (the workers' logs name each one)"
            )
        n_steps = len(window.values["train/loss"])
        return {
            **dict(zip(names, means)),
            "step": step,
            "train/stage": stage.index,
            "train/stage_step": stage_step,
            "train/lr": float(sched.lr[stage_step - 1]),
            "train/weight_decay": float(sched.weight_decay[stage_step - 1]),
            "train/temperature": stage.temperature(),
            "train/teacher_momentum": float(sched.momentum[stage_step - 1]),
            "train/param_norm": stage.param_norm(),
            "perf/images_per_s": n_steps * data.batch_size * self.world_size / means[len(names) + 1],
            "perf/data_wait_frac": means[len(names)],
            "data/rows_seen": self.bad["rows_seen"],
            "data/bad_rows": self.bad["bad_rows"],
        }

    def report(self, metrics: dict, stage, stage_step: int, step: int, position: DataPosition | None) -> None:
        """Report; with a data position, a checkpoint too (report is a barrier). ddp: rank 0 writes
        it. fsdp: every rank writes its shards into its own folder and reports it, Ray Train
        merging them into the one checkpoint folder; rank 0 adds model.pt with the whole weights."""
        metrics = {redact(k): v for k, v in metrics.items()}  # eval/<dataset>/... names a config value
        self.reports.append(metrics)
        if position is None:
            ray.train.report(metrics)
            return
        rng = gather(torch.get_rng_state())
        if self.rank != 0 and not stage.sharded:
            ray.train.report(metrics)
            return
        weights = stage.weights(rank0_only=True)  # fsdp: a collective
        with tempfile.TemporaryDirectory() as tmp:
            if stage.sharded:
                stage.save_shards(os.path.join(tmp, SHARDED_DIR))  # a collective
            if self.rank == 0:
                state = TrainState(
                    stage=stage.index,
                    stage_step=stage_step,
                    step=step,
                    data=position,
                    rng=rng,
                    bad_rows=dict(self.bad),
                    config=scrub(as_dict(stage.exp)),  # values from the environment masked (jobs/redact.py)
                    tokenizer=self.tokenizer.state(),
                    sharded=SHARDED_DIR if stage.sharded else None,
                    **weights,
                )
                save_checkpoint(tmp, state.to_checkpoint())
                with open(os.path.join(tmp, REPORTS_FILE), "w") as f:
                    f.write(reports_text(self.reports))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
