"""`tipslab bench data`: images/s of the full TIPS view pipeline on Ray Data and on a plain torch
DataLoader, with the same views on the same shards, in one run.

Both pipelines decode, crop, augment, mask and tokenise with the same `TIPSViews` (by default the
224 px global crop, 2 local crops of 96 px and DINOv2's augmentations: the most work per image)
and get the same CPU budget: Ray Data as its resource limit, the DataLoader as its worker count.
Each goes `epochs` times over the same rows (the first `rows` of the shards), each epoch with its
own augmentations, as a training stage does. The Ray Data side is the training pipeline's
(jobs/data/pipeline/streaming.py and batches.py): one dataset over all the epochs, the same read
units, the views in a pool of actors, one per CPU, each building its views once and reading its
units' rows itself, the blocks taken as torch
tensors and cut into batches of one epoch each. The DataLoader goes over the same epochs in one
iteration of its workers. Each is timed from the start of its iteration to its last batch;
`*_startup_s` is the time to the first batch, included in the rate. A warm-up run first starts
Ray's worker processes and imports torch in them, as a job's start does; the measured dataset
starts its own actor pool (once, as each stage of training does), while DataLoader workers are
forked from the warm driver. Each measured pipeline starts on a quiet machine (`settle`), as a
stage does: the last dataset's views actors go on using a CPU for a second or more after its last
batch, which would otherwise slow the next one's start-up. Over few rows the start-up weighs
more: measure with hundreds of rows per CPU and a few epochs.

`bench_data` returns (stable keys, for `tipslab bench data --json` and MLflow):
  cpus, batch_size, rows (per epoch, as asked, 0 = all), epochs, image_size, local_crops, local_crop_size, augment,
  mask_mode; views (where Ray Data's views ran, as seen in the workers: actors or tasks);
  raydata_images_per_s, raydata_images_per_s_per_cpu, raydata_startup_s, raydata_images_per_cpu_s,
  raydata_actors_ready_s (from the start until the last views actor had built its views: the
  actor pool's start-up, paid once per stage in training: fresh processes that import torch and
  build the views, where DataLoader workers are forked from a warm process);
  raydata_ready_images_per_s (from then to the last batch: the rate once the start-up is paid);
  dataloader_images_per_s, dataloader_images_per_s_per_cpu, dataloader_startup_s,
  dataloader_images_per_cpu_s;
  ratio = raydata_images_per_s / dataloader_images_per_s (> 1: Ray Data is faster);
  ready_ratio = raydata_ready_images_per_s / dataloader_images_per_s (the ratio a stage long enough
  to make the start-up negligible tends to).
`*_images_per_s_per_cpu` is the wall-clock rate over the CPU budget; `*_images_per_cpu_s` is
images over the CPU seconds the views took in the workers (without reading, transfer and
scheduling): on a machine shared with other work, the first falls and the second holds.
"""

import statistics
import time
from functools import partial
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import ray.data
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tipslab.jobs import storage
from tipslab.jobs.config import DataConfig, TrainConfig
from tipslab.jobs.data.pipeline.columns import TRAIN_COLUMNS
from tipslab.jobs.data.pipeline.flow import stage_batches
from tipslab.jobs.data.pipeline.shard_read import BATCHES_PER_BLOCK
from tipslab.jobs.data.pipeline.streaming import PositionedViews, map_views
from tipslab.jobs.data.pipeline.views import TIPSViews
from tipslab.jobs.data.shards.format import read_manifest, shard_files
from tipslab.models.errors import ConfigError, DataError
from tipslab.models.tokenizer import HashTokenizer

# The training pipeline's columns; the views measured have no tag vocabulary, so no `tags`.
COLUMNS = list(TRAIN_COLUMNS)


def bench_views(
    *,
    image_size: int = 224,
    local_crops: int = 2,
    local_crop_size: int = 96,
    augment: str = "dinov2",
    mask_mode: str = "random",
) -> TIPSViews:
    """The views measured: DINOv2's crop scales (global 0.32-1, local 0.05-0.32), 75% masking,
    captions of up to 64 tokens."""
    return TIPSViews(
        image_size=image_size,
        patch_size=14,
        local_crops=local_crops,
        local_crop_size=local_crop_size,
        global_crop_scale=[0.32, 1.0],
        local_crop_scale=[0.05, 0.32],
        mask_ratio=0.75,
        mask_mode=mask_mode,
        augment=augment,
        tokenizer=HashTokenizer(32_000, 64),
    )


def views_cpu_s(out: dict, start: float) -> dict:
    """`out` plus `views_cpu_s`: the CPU seconds the worker process spent on the batch since
    `start` (on its first row), which a busy machine inflates far less than wall time."""
    cpu = np.zeros(len(out["masks"]))
    if len(cpu):
        cpu[0] = time.process_time() - start
    out["views_cpu_s"] = cpu
    return out


class TimedViews:
    """The views (DataLoader side) with `views_cpu_s`."""

    def __init__(self, views: TIPSViews):
        self.views = views

    def __call__(self, batch: dict) -> dict:
        start = time.process_time()
        return views_cpu_s(self.views(batch), start)


class TimedPositionedViews(PositionedViews):
    """The training pipeline's views actor (Ray Data side) with `views_cpu_s`, and `views_ready_at`:
    the wall-clock time at which the actor had built its views, on the first row of its first batch
    (0 elsewhere)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ready_at = time.time()

    def batch(self, batch: dict):
        start = time.process_time()
        out, counts = super().batch(batch)
        if out is None:
            return None, counts
        out["views_ready_at"] = np.zeros(len(out["masks"]))
        out["views_ready_at"][0], self.ready_at = self.ready_at, 0.0
        # where these views were made: what the run reports as `views`, measured rather than asked for
        out["views_in_actor"] = np.full(len(out["masks"]), ray.get_runtime_context().get_actor_id() is not None)
        return views_cpu_s(out, start), counts


class ShardBatches(IterableDataset):
    """Batches of views from Parquet shards, the first `rows` rows (0: all) `epochs` times, each
    epoch's rows with their `epoch` column; DataLoader worker i of n takes every n-th batch."""

    def __init__(self, files: list[str], views: TIPSViews, batch_size: int, rows: int, epochs: int = 1):
        self.files, self.views, self.batch_size, self.rows, self.epochs = files, views, batch_size, rows, epochs

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = 0
        for epoch in range(self.epochs):
            for batch in self.read():
                if index % workers == worker:
                    yield self.views({**batch, "epoch": np.full(len(batch["key"]), epoch, np.int64)})
                index += 1

    def read(self):
        read = 0
        for f in self.files:
            fs, path = storage.resolve(f)
            with fs.open_input_file(path) as handle:
                for record_batch in pq.ParquetFile(handle).iter_batches(batch_size=self.batch_size, columns=COLUMNS):
                    if self.rows and read >= self.rows:
                        return
                    take = min(record_batch.num_rows, self.rows - read) if self.rows else record_batch.num_rows
                    read += take
                    yield {c: np.array(record_batch.column(c).to_pylist()[:take], dtype=object) for c in COLUMNS}


class Run(NamedTuple):
    """One pipeline's run (`timed`)."""

    startup_s: float  # to the first batch
    rate: float  # images/s from the start to the last batch
    cpu_rate: float  # images per CPU second of the views
    ready_s: float  # until the last views actor was ready (0 without actors)
    ran: str  # where Ray Data's views ran: "actors", "tasks", or "" for the DataLoader
    images: int


def timed(batches) -> Run:
    """The `Run` of an iterator of batches. The whole span counts: Ray Data computes ahead, so a
    clock started at the first batch would miss the work done before it arrives."""
    start, wall_start = time.perf_counter(), time.time()
    first, images, cpu, ready, ran = None, 0, 0.0, wall_start, set()
    for batch in batches:
        images += len(batch["masks"])
        cpu += float(np.asarray(batch["views_cpu_s"]).sum())  # both pipelines hand tensors
        if "views_ready_at" in batch:
            ready = max(ready, float(np.asarray(batch["views_ready_at"]).max()))
            ran.update("actors" if a else "tasks" for a in np.unique(np.asarray(batch["views_in_actor"])).tolist())
        if first is None:
            first = time.perf_counter()
    if images == 0:
        raise DataError("bench data: no views came out; are all rows bad?")
    rate = images / (time.perf_counter() - start)
    return Run(first - start, rate, images / cpu, max(ready - wall_start, 0.0), ",".join(sorted(ran)), images)


def settle(max_s: float = 15.0, busy_percent: float = 25.0) -> None:
    """Wait until this machine's CPUs are less than `busy_percent` busy over half a second (at most
    `max_s`: on a machine shared with other work they may never be)."""
    import psutil

    end = time.monotonic() + max_s
    while psutil.cpu_percent(interval=0.5) >= busy_percent and time.monotonic() < end:
        pass


def ready_rate(images: int, rate: float, ready_s: float) -> float:
    """images/s from `ready_s` (the last views actor ready) to the last batch, of a run of `images`
    at `rate` from its start: the pipeline's rate once its start-up is paid (slightly high: the
    first actor may have made views before the last was ready)."""
    left = images / rate - ready_s
    return images / left if left > 0 else float("nan")


def epoch_pieces(files: list[str], file_rows: list[int], rows: int, epochs: int) -> list[tuple[int, str, int]]:
    """(epoch, file, rows) of the first `rows` rows of the files (0: all), `epochs` times."""
    pieces, left = [], rows or sum(file_rows)
    for f, n in zip(files, file_rows):
        if left <= 0:
            break
        pieces.append((f, min(n, left)))
        left -= n
    return [(epoch, f, n) for epoch in range(epochs) for f, n in pieces]


def raydata_batches(
    files: list[str],
    file_rows: list[int],
    make_views,
    *,
    cpus: float,
    batch_size: int,
    rows: int,
    epochs: int = 1,
    actors: bool = True,
):
    """The training pipeline over the files' first `rows` rows (0: all), `epochs` times: one dataset
    (`map_views` on the pieces, as `stage_dataset` makes it: read units of about 4 batches in an actor
    pool started once, whose actors read their units), its blocks as torch tensors cut into batches
    of one epoch each (`EpochBatches`), with each epoch's short last batch; `make_views()` builds
    each actor's views (`actors=False`: Ray tasks of up to TASK_BATCHES batches each, fewer at the end, as
    training runs a stage under `data.views_actor_rows`)."""
    # As stage_dataset runs it (rows in order: flow.views_flow), no ExecutionResources limit (the
    # views' task or actor count and their CPU sizes keep the pipeline within `cpus`).
    ds = map_views(
        epoch_pieces(files, file_rows, rows, epochs),
        make_views,
        batch_size=batch_size,
        cpus=cpus,
        views_class=TimedPositionedViews,
        actors=actors,
        columns=TRAIN_COLUMNS,
        row_bytes=make_views().row_bytes(),
    )
    batches, skipped = stage_batches(ds, batch_size, TrainConfig().prefetch_batches), []  # as the loop takes them
    for epoch in range(epochs):
        while (batch := batches.next(epoch, skipped.append)) is not None:
            yield batch
        yield from skipped
        skipped.clear()


def dataloader_batches(files: list[str], views: TIPSViews, *, cpus: int, batch_size: int, rows: int, epochs: int = 1):
    return iter(
        DataLoader(
            ShardBatches(files, TimedViews(views), batch_size, rows, epochs),
            batch_size=None,
            num_workers=cpus,
            prefetch_factor=2 if cpus else None,
            persistent_workers=False,
        )
    )


def bench_data(
    shards_dir: str,
    *,
    cpus: int,
    batch_size: int = 32,
    rows: int = 0,
    epochs: int = 3,
    image_size: int = 224,
    local_crops: int = 2,
    local_crop_size: int = 96,
    augment: str = "dinov2",
    mask_mode: str = "random",
    warmup: bool = True,
    views: str = "auto",
    repeats: int = 1,
) -> dict:
    """Measure both pipelines on the shards in `shards_dir` (a folder with a manifest, local or
    s3://), each over the first `rows` rows (0: all), `epochs` times. `views`: actors, tasks, or
    auto (as training picks for a stage of that many rows: actors from `data.views_actor_rows`).
    `repeats` pairs of runs, the Ray Data run first in every other pair (a machine shared with other
    work swings by several percent between runs): the ratio is the median of the pairs' (all of them
    under `ratios`), each pipeline's figures those of its run of median rate.
    Needs Ray (an initialised instance, or Ray Data starts a local one). `warmup=False` skips the
    warm-up run (tests: figures with start-up).
    """
    files, file_rows, actors = measured_rows(shards_dir, cpus, batch_size, rows, epochs, views, repeats)
    views_setting = dict(image_size=image_size, local_crops=local_crops, local_crop_size=local_crop_size)
    make_views = partial(bench_views, **views_setting, augment=augment, mask_mode=mask_mode)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the driver only receives batches; the workers do the work
    try:
        if warmup:  # Ray's first worker processes, as at a job's start: a read unit per CPU (the
            # measured run starts its own actors, as every stage does)
            warm_rows = min(sum(file_rows), cpus * BATCHES_PER_BLOCK * batch_size)
            for _ in raydata_batches(
                files, file_rows, make_views, cpus=cpus, batch_size=batch_size, rows=warm_rows, actors=actors
            ):
                pass
        measure = dict(cpus=cpus, batch_size=batch_size, rows=rows, epochs=epochs)
        ray_runs, dl_runs = [], []
        for repeat in range(repeats):  # pairs, each pipeline first in every other one
            order = ("raydata", "dataloader") if repeat % 2 == 0 else ("dataloader", "raydata")
            for pipeline in order:
                settle()
                if pipeline == "raydata":
                    ray_runs.append(timed(raydata_batches(files, file_rows, make_views, **measure, actors=actors)))
                else:
                    dl_runs.append(timed(dataloader_batches(files, make_views(), **measure)))
    finally:
        torch.set_num_threads(threads)
    ray_run, dl_run = median_run(ray_runs), median_run(dl_runs)
    ratios = [r.rate / d.rate for r, d in zip(ray_runs, dl_runs)]

    def once_up(run: Run) -> float:  # a Ray Data run's images/s once its views actors were ready
        return ready_rate(run.images, run.rate, run.ready_s if actors else 0.0)

    return {
        "cpus": cpus,
        "batch_size": batch_size,
        "rows": rows,
        "epochs": epochs,
        **views_setting,
        "augment": augment,
        "mask_mode": mask_mode,
        "views": ray_run.ran,
        "repeats": repeats,
        **rates("raydata", ray_run, cpus),
        "raydata_actors_ready_s": ray_run.ready_s if actors else 0.0,
        "raydata_ready_images_per_s": once_up(ray_run),
        **rates("dataloader", dl_run, cpus),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "ready_ratio": statistics.median(once_up(r) / d.rate for r, d in zip(ray_runs, dl_runs)),
    }


def median_run(runs: list[tuple]) -> tuple:
    """The run of median rate among `runs` (`timed`'s, the rate second; the lower middle of an even count)."""
    return sorted(runs, key=lambda run: run[1])[(len(runs) - 1) // 2]


def measured_rows(
    shards_dir: str, cpus: int, batch_size: int, rows: int, epochs: int, views: str, repeats: int = 1
) -> tuple[list[str], list[int], bool]:
    """(the shard files, their rows, whether Ray Data's views run in actors), the settings checked."""
    if cpus < 1:
        raise ConfigError(f"bench data: cpus must be at least 1, got {cpus}")
    if epochs < 1:
        raise ConfigError(f"bench data: epochs must be at least 1, got {epochs}")
    if repeats < 1:
        raise ConfigError(f"bench data: repeats must be at least 1, got {repeats}")
    files = shard_files(shards_dir)
    file_rows = [s["num_rows"] for s in read_manifest(shards_dir)["shards"]]
    available = sum(file_rows)
    measured = min(rows, available) if rows else available
    if measured < 2 * batch_size:
        raise ConfigError(
            f"bench data: {measured} rows make fewer than 2 batches of {batch_size}; "
            f"use more rows or a smaller batch size"
        )
    if views not in ("auto", "actors", "tasks"):
        raise ConfigError(f"bench data: views must be auto, actors or tasks, not {views!r}")
    auto = measured * epochs >= DataConfig().views_actor_rows
    return files, file_rows, (auto if views == "auto" else views == "actors")


def rates(pipeline: str, run: Run, cpus: int) -> dict:
    return {
        f"{pipeline}_images_per_s": run.rate,
        f"{pipeline}_images_per_s_per_cpu": run.rate / cpus,
        f"{pipeline}_startup_s": run.startup_s,
        f"{pipeline}_images_per_cpu_s": run.cpu_rate,
    }
