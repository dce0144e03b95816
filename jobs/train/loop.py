"""TIPS pretraining on Ray Train: a TorchTrainer whose workers each stream their own shard files.

Checkpoints go to the run's storage (a folder or s3://) through `ray.train.report`, every
`train.checkpoint_every` steps and at the end, the last `train.checkpoints_to_keep` kept. Each holds
the student, teacher, objective and optimizer state, the stage and step, the data position (the
epoch and the shard files done, jobs/data/pipeline/streaming.py), every rank's RNG state and the tokenizer.
After a worker or node failure Ray Train restarts the worker group and the loop resumes from
`ray.train.get_checkpoint()`, the latest registered checkpoint; running again with the same
(storage_path, name) resumes a stopped run the same way.

`train.strategy` picks how the workers share the model. ddp: every worker holds the whole student,
teacher and optimizer (`ray.train.torch.prepare_model`), and rank 0 writes the checkpoint, one
`model.pt`. fsdp: FSDP2 (jobs/train/parallel.py) shards the student and, the same way, the EMA teacher
over the workers, each transformer block its own unit, and the optimizer holds each rank's shards
only. A checkpoint then holds, besides `model.pt`, a `sharded/` folder written with
torch.distributed.checkpoint: every rank writes its shards of student, teacher and optimizer into its
own temporary folder and reports it, and Ray Train V2 copies every rank's files into the one
checkpoint folder of that report, which it registers only once every rank has reported (so never
with some rank's shards missing). Rank 0's `model.pt` holds everything else, as with ddp, plus the
whole student and teacher weights (gathered at each checkpoint, the optimizer never), so that
evaluation, `tipslab embed` and `load_student` read it unchanged; a resume reads the shards
(torch.distributed.checkpoint reshards them if the number of workers changed).

A non-finite loss (or too many bad rows) is not a failure to retry: the workers write the reason
to `stopped.json` in the run's folder and return, and `fit()` raises `RunStopped` with it.
"""
import contextlib
import hashlib
import json
import os
import tempfile
import time

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train.torch import TorchConfig, TorchTrainer
from torch.distributed.device_mesh import init_device_mesh

from tipslab.models.checkpoint import CHECKPOINT_FILE, save_checkpoint, tips_config
from tipslab.models.distributed import world
from tipslab.models.objective import TIPSObjective
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent
from tipslab.models.tokenizer import build_tokenizer

from tipslab.jobs.config import STRATEGIES
from tipslab.jobs import storage
from tipslab.jobs.data.pipeline.streaming import plan_epoch, rank_dataset, train_shards
from tipslab.jobs.data.pipeline.views import BAD_ROW_COLUMNS
from tipslab.jobs.train.parallel import full_model_state_dict, full_parameter, full_state, load_sharded, param_norm, save_sharded, shard_model, unsharded
from tipslab.jobs.train.stages import carry_weights, stage_configs
from tipslab.jobs.train.step import LossWatch, NonFiniteLossError, compile_parts, Schedules, apply_schedules, param_groups, tips_step

STOPPED_FILE = "stopped.json"
SHARDED_DIR = "sharded"  # an fsdp checkpoint's torch.distributed.checkpoint folder, beside model.pt
# Set to a folder, every rank appends "epoch key_id" of each row it trains on to a file there:
# how the tests count replayed rows. Off unless set.
ROW_TRACE_ENV = "TIPSLAB_ROW_TRACE"


class RunStopped(RuntimeError):
    """The run stopped by itself (non-finite loss, too many bad rows); the message says where."""


def state_digest(module_state: dict, optimizer_state: dict) -> str:
    """sha256 over parameters and optimizer state, for checking that a resume restored them.

    Plain state dicts (ddp: `state_dict()`s, optimizer state keyed by parameter index), or whole
    ones keyed by names (fsdp: `parallel.full_state` in the loop, `parallel.read_sharded` of the
    checkpoint's sharded/ folder): the same state gives the same digest either way it was read.
    A DTensor is read whole (a collective)."""
    h = hashlib.sha256()

    def add(value):
        h.update(unsharded(value.detach()).cpu().contiguous().numpy().tobytes())

    for key in sorted(module_state):
        h.update(key.encode())
        add(module_state[key])
    for pid in sorted(optimizer_state["state"]):
        for name in sorted(optimizer_state["state"][pid]):
            value = optimizer_state["state"][pid][name]
            h.update(f"{pid}.{name}".encode())
            if torch.is_tensor(value):
                add(value)
            else:
                h.update(repr(value).encode())
    return h.hexdigest()


def gather(obj):
    """Every rank's `obj`, in rank order."""
    rank, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: list[float], device) -> list[float]:
    x = torch.tensor(values, dtype=torch.float64, device=device)
    if world()[1] > 1:
        dist.all_reduce(x)
    return x.tolist()


class RowTrace:
    def __init__(self, rank: int):
        folder = os.environ.get(ROW_TRACE_ENV)
        self.path = os.path.join(folder, f"rank{rank}-{os.getpid()}.txt") if folder else None

    def rows(self, epoch: int, ids: torch.Tensor) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write("".join(f"{epoch} {i}\n" for i in ids.tolist()))

    def event(self, **info) -> None:
        if self.path:
            with open(self.path.replace(".txt", ".json"), "a") as f:
                f.write(json.dumps(info) + "\n")


class Stage:
    """One stage's modules, optimizer and schedules on this worker.

    previous: the last stage's state (unsharded weights: "student", "teacher", "objective") to
    start from, or with `resume` the checkpoint's state to resume from; an fsdp checkpoint's shards
    are then read from `folder` (the checkpoint's folder)."""

    def __init__(self, exp: dict, device, previous: dict | None, resume: bool, folder: str | None = None):
        train = exp["train"]
        self.sharded = train["strategy"] == "fsdp"
        torch.manual_seed(train["seed"])  # identical initial weights on every rank
        cfg = tips_config(exp)
        self.exp, self.device = exp, device
        self.student = TIPSStudent(cfg).to(device)  # before the optimizer and any restored state
        self.objective = TIPSObjective(cfg).to(device)
        self.teacher = None
        if previous is not None and not resume:  # a new stage: start from the last one's weights
            carry_weights(self.student, previous["student"])
            carry_weights(self.objective, previous["objective"])
        if self.objective.needs_teacher:
            self.teacher = EMATeacher(self.student).to(device)  # a copy of the student's current weights
            if previous is not None and previous.get("teacher") is not None and not resume:
                carry_weights(self.teacher, previous["teacher"])
        if self.sharded:
            # FSDP2 in place of DDP; the teacher sharded the same way, so that its EMA update stays local.
            mesh = init_device_mesh(device.type, (world()[1],))
            shard_model(self.student, mesh)
            if self.teacher is not None:
                shard_model(self.teacher, mesh)
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(param_groups(self.student, train["weight_decay"]), lr=train["lr"], fused=fused)
        if resume:
            self.objective.load_state_dict(previous["objective"])
            if self.sharded:
                load_sharded(self.sharded_state(), os.path.join(folder, SHARDED_DIR))
            else:
                self.student.load_state_dict(previous["student"])
                self.optimizer.load_state_dict(previous["optimizer"])
                if self.teacher is not None:
                    self.teacher.load_state_dict(previous["teacher"])
        self.sched = Schedules(train, exp["loss"])
        # FSDP2 shards in place: the sharded student is its own training wrapper.
        self.model = self.student if self.sharded else ray.train.torch.prepare_model(self.student)
        if train["compile"]:
            self.model = torch.compile(self.model)
            compile_parts(self.teacher, self.objective)

    def sharded_state(self) -> dict:
        """What an fsdp checkpoint's sharded/ folder holds (parallel.save_sharded)."""
        state = {"student": self.student, "optimizer": self.optimizer}
        if self.teacher is not None:
            state["teacher"] = self.teacher
        return state

    def state(self, rank0_only: bool = False) -> dict:
        """Unsharded state dicts of student, teacher, objective and (ddp) optimizer. fsdp: a
        collective that gathers the weights (on every rank, or on rank 0 only with `rank0_only`:
        the others get empty dicts), never the optimizer (None: its state is in the shards)."""
        if not self.sharded:
            return {"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "objective": self.objective.state_dict(),
                    "teacher": self.teacher.state_dict() if self.teacher is not None else None}
        return {"student": full_model_state_dict(self.student, rank0_only), "optimizer": None,
                "objective": self.objective.state_dict(),
                "teacher": full_model_state_dict(self.teacher, rank0_only) if self.teacher is not None else None}

    def digest(self) -> str:
        """`state_digest` of the student and optimizer; fsdp: gathered whole on every rank (a
        collective, optimizer included: for the resume trace only), as `read_sharded` reads them
        from the checkpoint."""
        if not self.sharded:
            return state_digest(self.student.state_dict(), self.optimizer.state_dict())
        return state_digest(*full_state(self.student, self.optimizer))

    def param_norm(self) -> float:
        """The student's parameter norm (fsdp: a collective)."""
        return float(param_norm(self.student.parameters()))

    def temperature(self) -> float:
        """The contrastive temperature (fsdp: a collective)."""
        return float(full_parameter(self.student, "text.log_temperature").exp())

    def probe(self, probe) -> dict:
        """Run the retrieval probe on the student. fsdp: on every rank, since each block's forward
        gathers its weights from all of them; the root's own parameters (embeddings, heads),
        which the probe uses outside the root's forward, are gathered around it."""
        if not self.sharded:
            return probe(self.student, self.device)
        self.student.unshard()
        try:
            return probe(self.student, self.device)
        finally:
            self.student.reshard()


@contextlib.contextmanager
def restored_state():
    """(state, folder): the run's latest checkpoint, `model.pt` read (memory-mapped: an fsdp
    checkpoint's whole weights are read only where a new stage starts from them) and its folder,
    which exists until the with block ends (fsdp reads its shards there); (None, None) when the
    run has none."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        yield None, None
        return
    with checkpoint.as_directory() as d:
        path = os.path.join(d, CHECKPOINT_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tipslab checkpoint at {path}")
        yield torch.load(path, map_location="cpu", weights_only=False, mmap=True), d


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. config: {"experiment": resolved config, "run": {storage_path, name}}."""
    exp = config["experiment"]
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    try:
        Loop(exp, rank, world_size, device).run()
    except (NonFiniteLossError, RunStopped) as err:
        # Every rank gets here at the same step (the checks are collective); retrying would only
        # meet the same loss again, so the run ends here and fit() raises it.
        if rank == 0:
            storage.write_bytes(storage.join(config["run"]["path"], STOPPED_FILE),
                                json.dumps({"reason": str(err), "kind": type(err).__name__}).encode())


class Loop:
    def __init__(self, exp: dict, rank: int, world_size: int, device):
        self.exp, self.rank, self.world_size, self.device = exp, rank, world_size, device
        self.train = exp["train"]
        self.tokenizer = build_tokenizer(exp["model"])  # travels inside every checkpoint
        self.shards = train_shards(exp)
        self.trace = RowTrace(rank)
        self.bad = dict.fromkeys(BAD_ROW_COLUMNS, 0)  # run totals over all ranks

    def run(self) -> None:
        stages = stage_configs(self.exp)
        with contextlib.ExitStack() as opened:
            state, folder = opened.enter_context(restored_state())
            first, step = 0, 0
            position = {"epoch": 0, "done": []}
            if state is not None:
                first, step, position = state["stage"], state["step"], state["data"]
                self.bad.update(state.get("bad_rows", {}))
            for index in range(first, len(stages)):
                name, stage_exp = stages[index]
                here = state is not None and state["stage"] == index
                resume = here and state["stage_step"] < stage_exp["train"]["steps"]
                if here and not resume:
                    continue  # the checkpoint is this stage's last
                if resume:
                    check_strategy(state, stage_exp)
                stage = Stage(stage_exp, self.device, state, resume, folder)
                opened.close()  # the checkpoint's files are read
                stage_step = state["stage_step"] if resume else 0
                if resume:
                    rng = state["rng"]
                    if len(rng) == self.world_size:
                        torch.set_rng_state(rng[self.rank])
                    if self.trace.path:  # fsdp: a collective, on every rank alike (the variable reaches all)
                        self.trace.event(resumed_at=step, stage=index, digest=stage.digest())
                else:
                    torch.manual_seed(self.train["seed"] * 1000 + self.rank + step)  # per-rank randomness
                step, position = self.run_stage(stage, index, name, stage_step, step, position)
                if index + 1 < len(stages):  # the next stage starts from these weights (fsdp: gathered)
                    state = {"stage": index, "stage_step": stage_exp["train"]["steps"], "step": step, "data": position,
                             **stage.state()}

    def run_stage(self, stage: Stage, index: int, name: str, stage_step: int, step: int, position: dict):
        exp, train = stage.exp, stage.exp["train"]
        steps, batch_size = train["steps"], exp["data"]["batch_size"]
        probe = None
        if self.train["probe_every"] and (self.rank == 0 or stage.sharded):  # fsdp: its forwards are collectives
            from tipslab.jobs.train.probe import RetrievalProbe
            probe = RetrievalProbe(exp, self.tokenizer)
        cpus = exp["data"]["cpus"] / self.world_size
        # The step's values stay on the device until a report reads them all in one transfer; the
        # watch is checked there too, before any checkpoint.
        window: dict[str, list[torch.Tensor]] = {}
        watch = LossWatch()
        counters = self.no_counts()
        wait_s, window_start = 0.0, time.perf_counter()
        epoch, done = position["epoch"], set(position["done"])
        while stage_step < steps:
            plan = plan_epoch(self.shards, train["seed"], epoch, self.world_size, done)
            ds = rank_dataset(exp, plan, self.rank, cpus)
            batches = iter(ds.iter_torch_batches(batch_size=batch_size, drop_last=False, device=self.device,
                                                 prefetch_batches=train["prefetch_batches"]) if ds else ())
            rows_done, epoch_steps = 0, 0
            while stage_step < steps:
                t0 = time.perf_counter()
                batch = next(batches, None)
                wait_s += time.perf_counter() - t0
                if batch is not None and len(batch["masks"]) < batch_size:
                    # The epoch's short last batch is not trained on (every rank steps alike), but
                    # the bad rows among its input are counted.
                    counters += torch.stack([batch[column].sum() for column in BAD_ROW_COLUMNS])
                    batch = None
                # The epoch ends for every rank when one runs out: DDP needs the same step count.
                if min(all_min(batch is not None, self.device)) < 1:
                    break
                rows_done = rows_done + batch.pop("rows_done").sum()  # on the device: read at checkpoints
                self.trace.rows(epoch, batch.pop("key_id"))
                counters += torch.stack([batch.pop(column).sum() for column in BAD_ROW_COLUMNS])
                apply_schedules(stage.optimizer, stage.sched, stage_step)
                values = tips_step(
                    stage.model, stage.student, stage.teacher, stage.objective, stage.optimizer, batch,
                    teacher_temp=float(stage.sched.teacher_temp[stage_step]), momentum=float(stage.sched.momentum[stage_step]),
                    grad_clip=train["grad_clip"], step=step, bf16=True, watch=watch)
                stage_step, step, epoch_steps = stage_step + 1, step + 1, epoch_steps + 1
                for key, value in values.items():
                    window.setdefault(f"train/{key}", []).append(value)
                last = stage_step == steps
                if not (step % train["log_every"] == 0 or last or step % max(train["checkpoint_every"], 1) == 0
                        and train["checkpoint_every"]):
                    continue
                watch.check()  # a collective, at the same step on every rank
                elapsed = time.perf_counter() - window_start
                metrics = self.window_metrics(stage, window, counters, wait_s, elapsed, stage_step, step, index, name)
                if probe is not None and (step % self.train["probe_every"] == 0 or last):
                    metrics.update(stage.probe(probe))
                save = last or bool(train["checkpoint_every"]) and step % train["checkpoint_every"] == 0
                position_now = None
                if save or last:
                    finished = plan.merge_done(gather(plan.done_files(self.rank, int(rows_done))))
                    position_now = {"epoch": epoch, "done": sorted(done | finished)}
                self.report(metrics, stage, index, stage_step, step, position_now if save else None)
                window, counters, wait_s, window_start = {}, self.no_counts(), 0.0, time.perf_counter()
                if last:
                    return step, position_now
            if epoch_steps == 0 and not done:
                raise RunStopped(f"data: the {exp['data']['train_split']} split has too few rows for one batch of "
                                 f"{batch_size} on each of {self.world_size} ranks")
            epoch, done = epoch + 1, set()
        return step, {"epoch": epoch, "done": sorted(done)}

    def no_counts(self) -> torch.Tensor:
        """Zero bad-row counters (BAD_ROW_COLUMNS), on the device, where batches add theirs."""
        return torch.zeros(len(BAD_ROW_COLUMNS), dtype=torch.int64, device=self.device)

    def window_metrics(self, stage, window, counters, wait_s, elapsed, stage_step, step, index, name) -> dict:
        """Window means of the loss terms and norms, over every rank in one collective; the bad-row
        counters summed over ranks (only rank 0's report is kept)."""
        names = list(window)
        means_here = torch.stack([torch.stack(v).float().mean() for v in window.values()]).tolist()
        sums = all_sum(means_here + [wait_s / elapsed, elapsed]
                       + counters.tolist(), self.device)
        means = [v / self.world_size for v in sums[:len(names) + 2]]
        for column, total in zip(BAD_ROW_COLUMNS, sums[len(names) + 2:]):
            self.bad[column] += int(total)
        sched, n_steps = stage.sched, len(window["train/loss"])
        data = stage.exp["data"]
        if self.bad["rows_seen"] and self.bad["bad_rows"] / self.bad["rows_seen"] > data["max_bad_fraction"]:
            raise RunStopped(f"data: {self.bad['bad_rows']} of {self.bad['rows_seen']} rows seen were bad, more than "
                             f"data.max_bad_fraction = {data['max_bad_fraction']} (the workers' logs name each one)")
        metrics = dict(zip(names, means))
        metrics.update({
            "step": step, "train/stage": index, "train/stage_step": stage_step,
            "train/lr": float(sched.lr[stage_step - 1]),
            "train/weight_decay": float(sched.weight_decay[stage_step - 1]),
            "train/temperature": stage.temperature(),
            "train/teacher_momentum": float(sched.momentum[stage_step - 1]),
            "train/param_norm": stage.param_norm(),
            "perf/images_per_s": n_steps * data["batch_size"] * self.world_size / means[len(names) + 1],
            "perf/data_wait_frac": means[len(names)],
            "data/rows_seen": self.bad["rows_seen"], "data/bad_rows": self.bad["bad_rows"],
        })
        return metrics

    def report(self, metrics: dict, stage: Stage, index: int, stage_step: int, step: int, position: dict | None) -> None:
        """Report; with a data position, a checkpoint too (report is a barrier). ddp: rank 0 writes
        it. fsdp: every rank writes its shards into its own folder and reports it, Ray Train
        merging them into the one checkpoint folder; rank 0 adds model.pt with the whole weights."""
        if position is None:
            ray.train.report(metrics)
            return
        rng = gather(torch.get_rng_state())
        if self.rank != 0 and not stage.sharded:
            ray.train.report(metrics)
            return
        weights = stage.state(rank0_only=True)  # fsdp: a collective
        with tempfile.TemporaryDirectory() as tmp:
            if stage.sharded:
                save_sharded(stage.sharded_state(), os.path.join(tmp, SHARDED_DIR))  # a collective
            if self.rank == 0:
                save_checkpoint(tmp, {
                    **weights, "stage": index, "stage_step": stage_step, "step": step, "data": position, "rng": rng,
                    "bad_rows": dict(self.bad), "config": stage.exp, "tokenizer": self.tokenizer.state(),
                    "sharded": SHARDED_DIR if stage.sharded else None})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def check_strategy(state: dict, exp: dict) -> None:
    """A stage resumes only with the strategy that wrote its checkpoint: an fsdp checkpoint's
    optimizer state is in its shards, a ddp checkpoint has none."""
    written = "fsdp" if state.get("sharded") else "ddp"
    if written != exp["train"]["strategy"]:
        raise RunStopped(f"train.strategy: the run's checkpoint was written with {written}, this run uses "
                         f"{exp['train']['strategy']!r}; resume it with train.strategy={written}")


def all_min(flag: bool, device) -> list[float]:
    """[the minimum of `flag` over ranks] (1.0 when every rank has it)."""
    if world()[1] == 1:
        return [float(flag)]
    # The loop's one read of the device per step, with several ranks: they must agree on the epoch's end.
    x = torch.tensor([float(flag)], device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return x.tolist()


class TIPSTrainer(TorchTrainer):
    """A TorchTrainer whose `fit()` raises `RunStopped` when the workers stopped the run."""

    def __init__(self, *args, run_path: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._run_path = run_path

    def fit(self):
        marker = storage.join(self._run_path, STOPPED_FILE)
        if storage.exists(marker):
            storage.delete(marker)  # left by an earlier attempt of this run
        result = super().fit()
        if storage.exists(marker):
            raise RunStopped(json.loads(storage.read_bytes(marker))["reason"])
        return result


def build_trainer(exp: dict, *, name: str, storage_path: str, callbacks=(), max_failures: int | None = None,
                  resources_per_worker: dict | None = None):
    """A TorchTrainer for one experiment; `fit()` runs it (or resumes the run stored under
    (storage_path, name)) and returns the Ray Train result. `resources_per_worker` adds custom
    resources to each worker's CPU/GPU request (e.g. to pin workers to some nodes)."""
    train = exp["train"]
    if train["strategy"] not in STRATEGIES:
        raise ValueError(f"train.strategy: {train['strategy']!r} is not one of {', '.join(STRATEGIES)}")
    use_gpu = train["gpus_per_worker"] > 0
    resources = {"CPU": train["cpus_per_worker"], **(resources_per_worker or {})}
    if use_gpu:
        resources["GPU"] = train["gpus_per_worker"]
    run_path = storage.join(storage_path, name) if storage.is_s3(storage_path) else os.path.join(storage_path, name)
    return TIPSTrainer(
        train_loop,
        run_path=run_path,
        train_loop_config={"experiment": exp, "run": {"path": run_path}},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=train["num_workers"], use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks),
            # Ray workers see no variables set in the driver after ray.init: S3 settings go along.
            worker_runtime_env={"env_vars": {**storage.aws_env(), **{k: os.environ[k] for k in (ROW_TRACE_ENV,) if k in os.environ}}},
            # relax_collectives_on_preemption stays off: with it Ray Train may register a checkpoint
            # without the files of a preempted rank, which for fsdp would be a partial checkpoint.
            failure_config=ray.train.FailureConfig(
                max_failures=train["max_failures"] if max_failures is None else max_failures, controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train["checkpoints_to_keep"]),
        ),
    )
