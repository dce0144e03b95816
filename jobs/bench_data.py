"""`tipslab bench data`: images/s of the full TIPS view pipeline on Ray Data and on a plain torch
DataLoader, with the same views on the same shards, in one run.

Both pipelines decode, crop, augment, mask and tokenise with the same `TIPSViews` (by default the
224 px global crop, 2 local crops of 96 px and DINOv2's augmentations: the most work per image)
and get the same CPU budget: Ray Data as its resource limit, the DataLoader as its worker count.
Each is timed from the start of its iteration to its last batch, after a warm-up that starts Ray's
worker processes (DataLoader workers are forked from the warm driver); `*_startup_s` is the time to
the first batch, included in the rate. Over few rows the start-up weighs more: measure with
hundreds of rows per CPU.
"""
import time

import numpy as np
import pyarrow.parquet as pq
import ray.data
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tipslab.models.tokenizer import HashTokenizer

from .data import storage
from .data.pipeline import BATCHES_PER_BLOCK, read_blocks, read_shards
from .data.shards import read_manifest, shard_files
from .data.views import TIPSViews

COLUMNS = ["key", "image", "web_caption", "synthetic_caption"]


def bench_views(*, image_size: int = 224, local_crops: int = 2, local_crop_size: int = 96, augment: str = "dinov2",
                mask_mode: str = "random") -> TIPSViews:
    """The views measured: DINOv2's crop scales (global 0.32-1, local 0.05-0.32), 75% masking,
    captions of up to 64 tokens."""
    return TIPSViews(image_size=image_size, patch_size=14, local_crops=local_crops, local_crop_size=local_crop_size,
                     global_crop_scale=[0.32, 1.0], local_crop_scale=[0.05, 0.32], mask_ratio=0.75,
                     mask_mode=mask_mode, augment=augment, tokenizer=HashTokenizer(32_000, 64))


class TimedViews:
    """The views plus `views_cpu_s`: the CPU seconds their worker process spent on the batch (on its
    first row), which a busy machine inflates far less than wall time."""

    def __init__(self, views: TIPSViews):
        self.views = views

    def __call__(self, batch: dict) -> dict:
        start = time.process_time()
        out = self.views(batch)
        cpu = np.zeros(len(out["masks"]))
        if len(cpu):
            cpu[0] = time.process_time() - start
        out["views_cpu_s"] = cpu
        return out


class ShardBatches(IterableDataset):
    """Batches of views from Parquet shards; DataLoader worker i of n takes every n-th batch."""

    def __init__(self, files: list[str], views: TIPSViews, batch_size: int, rows: int):
        self.files, self.views, self.batch_size, self.rows = files, views, batch_size, rows

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index, read = 0, 0
        for f in self.files:
            fs, path = storage.resolve(f)
            with fs.open_input_file(path) as handle:
                for record_batch in pq.ParquetFile(handle).iter_batches(batch_size=self.batch_size, columns=COLUMNS):
                    if self.rows and read >= self.rows:
                        return
                    take = min(record_batch.num_rows, self.rows - read) if self.rows else record_batch.num_rows
                    read += take
                    if index % workers == worker:
                        yield self.views({c: np.array(record_batch.column(c).to_pylist()[:take], dtype=object)
                                          for c in COLUMNS})
                    index += 1


def timed(batches) -> tuple[float, float, float]:
    """(seconds to the first batch, images/s from the start to the last batch, images per CPU second
    of the views) of an iterator of batches. The whole span counts: Ray Data computes ahead, so a
    clock started at the first batch would miss the work done before it arrives."""
    start = time.perf_counter()
    first, images, cpu = None, 0, 0.0
    for batch in batches:
        images += len(batch["masks"])
        cpu += float(np.asarray(batch["views_cpu_s"]).sum())  # the DataLoader hands tensors
        if first is None:
            first = time.perf_counter()
    if images == 0:
        raise ValueError("bench data: no views came out; are all rows bad?")
    return first - start, images / (time.perf_counter() - start), images / cpu


def raydata_batches(files: list[str], views: TIPSViews, *, cpus: float, batch_size: int, rows: int,
                    file_rows: int):
    """The training pipeline's read (`read_shards` into `read_blocks` blocks: about 4 batches per
    views task) of the files' `file_rows` rows, of which the first `rows` (0: all) go through."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.resource_limits = ray.data.ExecutionResources(cpu=cpus)
    ds = read_shards(files, COLUMNS, read_blocks(file_rows, len(files), batch_size, int(cpus)))
    if rows:
        ds = ds.limit(rows)
    ds = ds.map_batches(views, batch_size=batch_size, batch_format="numpy", num_cpus=1)
    return ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2)


def dataloader_batches(files: list[str], views: TIPSViews, *, cpus: int, batch_size: int, rows: int):
    return iter(DataLoader(ShardBatches(files, views, batch_size, rows), batch_size=None, num_workers=cpus,
                           prefetch_factor=2 if cpus else None, persistent_workers=False))


def bench_data(shards_dir: str, *, cpus: int, batch_size: int = 32, rows: int = 0, image_size: int = 224,
               local_crops: int = 2, local_crop_size: int = 96, augment: str = "dinov2",
               mask_mode: str = "random", warmup: bool = True) -> dict:
    """Measure both pipelines on the shards in `shards_dir` (a folder with a manifest, local or
    s3://), each over the first `rows` rows (0: all). Needs Ray (an initialised instance, or Ray
    Data starts a local one). `warmup=False` skips the warm-up run (tests: figures with start-up).

    Returns (stable keys, for `tipslab bench data --json` and MLflow):
      cpus, batch_size, rows (as asked, 0 = all), image_size, local_crops, local_crop_size, augment,
      mask_mode;
      raydata_images_per_s, raydata_images_per_s_per_cpu, raydata_startup_s, raydata_images_per_cpu_s;
      dataloader_images_per_s, dataloader_images_per_s_per_cpu, dataloader_startup_s,
      dataloader_images_per_cpu_s;
      ratio = raydata_images_per_s / dataloader_images_per_s (> 1: Ray Data is faster).
    `*_images_per_s_per_cpu` is the wall-clock rate over the CPU budget; `*_images_per_cpu_s` is
    images over the CPU seconds the views took in the workers (without reading, transfer and
    scheduling): on a machine shared with other work, the first falls and the second holds.
    """
    if cpus < 1:
        raise ValueError(f"bench data: cpus must be at least 1, got {cpus}")
    files = shard_files(shards_dir)
    available = sum(s["num_rows"] for s in read_manifest(shards_dir)["shards"])
    measured = min(rows, available) if rows else available
    if measured < 2 * batch_size:
        raise ValueError(f"bench data: {measured} rows make fewer than 2 batches of {batch_size}; "
                         f"use more rows or a smaller batch size")
    views = TimedViews(bench_views(image_size=image_size, local_crops=local_crops, local_crop_size=local_crop_size,
                                   augment=augment, mask_mode=mask_mode))
    threads = torch.get_num_threads()
    execution = ray.data.DataContext.get_current().execution_options
    limits = execution.resource_limits
    torch.set_num_threads(1)  # the driver only receives batches; the workers do the work
    try:
        if warmup:  # Ray's worker processes import torch and the views once, as they would for a job:
            # a read block per CPU, so that every worker process the measurement uses is started
            warm_rows = min(available, cpus * BATCHES_PER_BLOCK * batch_size)
            for _ in raydata_batches(files, views, cpus=cpus, batch_size=batch_size, rows=warm_rows,
                                     file_rows=available):
                pass
        measure = dict(cpus=cpus, batch_size=batch_size, rows=rows)
        ray_startup, ray_rate, ray_cpu_rate = timed(raydata_batches(files, views, **measure, file_rows=available))
        dl_startup, dl_rate, dl_cpu_rate = timed(dataloader_batches(files, views, **measure))
    finally:
        torch.set_num_threads(threads)
        execution.resource_limits = limits
    return {
        "cpus": cpus, "batch_size": batch_size, "rows": rows, "image_size": image_size, "local_crops": local_crops,
        "local_crop_size": local_crop_size, "augment": augment, "mask_mode": mask_mode,
        "raydata_images_per_s": ray_rate, "raydata_images_per_s_per_cpu": ray_rate / cpus,
        "raydata_startup_s": ray_startup, "raydata_images_per_cpu_s": ray_cpu_rate,
        "dataloader_images_per_s": dl_rate, "dataloader_images_per_s_per_cpu": dl_rate / cpus,
        "dataloader_startup_s": dl_startup, "dataloader_images_per_cpu_s": dl_cpu_rate,
        "ratio": ray_rate / dl_rate,
    }
