"""The Ray Data input pipeline of training: each rank streams its own shard files through the views.

Ray Data has no resumable iterator, so the position in the data is kept in our own terms: each
epoch's shard files are shuffled from (seed, epoch) and dealt out to the ranks, every rank reads its
files in order (`preserve_order`), and a checkpoint records which files are fully consumed. A
restart deals out only the files not done yet, so it replays at most the file each rank was in the
middle of (plus the steps after the checkpoint), whatever the number of ranks after the restart.

Parallelism: a rank's files are read into about one block per `BATCHES_PER_BLOCK` batches (Ray
Data's `override_num_blocks`, `read_blocks`), each block a views task of its own, so that the views
run on every CPU given and hand their first batches over early. Ray Data 2.60's default Parquet
reader (DataSourceV2) ignores `override_num_blocks` and packs small shard files into one block that
a single views task then works through alone; `read_shards` reads with the V1 reader, which honours
it by splitting each file's rows into consecutive blocks, in order.

Each batch carries `rows_done` (on the last output row of each views batch: the input rows, bad ones
included, that are fully used once that row is trained on); summed over the trained batches it is
the rank's position in its ordered file list. `key_id` (a stable 63-bit id of the row's key) lets a
run be checked for replayed rows; it is -1 in a views batch that dropped bad rows, where ids can no
longer be matched to rows.
"""
import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np
import ray.data

from tipslab.models.tokenizer import build_tokenizer

from .shards import read_manifest, shard_files
from .views import TIPSViews, view_options

TRAIN_COLUMNS = ["key", "image", "web_caption", "synthetic_caption"]
POSITION_COLUMNS = ("rows_done", "key_id")
# Rows of one read block, in batches: a views task's unit of work. Fewer batches per block add
# per-task overhead; more delay the first batch and leave CPUs idle when a rank has few rows.
BATCHES_PER_BLOCK = 4


def read_tag_vocab(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def split_dir(root: str, split: str) -> str:
    return os.path.join(root, split)


def views_for(exp: dict, epoch: int = 0) -> TIPSViews:
    data = exp["data"]
    return TIPSViews(**view_options(exp), epoch=epoch, tokenizer=build_tokenizer(exp["model"]),
                     tag_vocab=read_tag_vocab(data["tag_vocab"]) if data["tag_vocab"] else ())


def key_ids(keys) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(str(k).encode(), digest_size=8).digest(), "little") >> 1
                     for k in keys], dtype=np.int64)


class PositionedViews:
    """TIPSViews plus the position columns (module docstring). With `share` (fewer files than
    ranks), every rank reads the same files and keeps the rows whose key id falls to it."""

    def __init__(self, views: TIPSViews, rank: int = 0, world_size: int = 1, share: bool = False):
        self.views, self.rank, self.world_size, self.share = views, rank, world_size, share

    def __call__(self, batch: dict) -> dict:
        n_in = len(batch["key"])
        ids = key_ids(batch["key"])
        if self.share:
            mine = ids % self.world_size == self.rank
            batch, ids = {k: v[mine] for k, v in batch.items()}, ids[mine]
        out = self.views(batch)
        n_kept, n_out = len(batch["key"]), len(out["masks"])
        rows_done = np.zeros(n_out, dtype=np.int64)
        if n_out:
            rows_done[-1] = n_in
        out["rows_done"] = rows_done
        # An all-bad (or, shared, all-other-rank) batch has no row to carry its count: its file
        # then counts as not done, and a restart re-reads it (a replay, never a skip).
        out["key_id"] = ids if n_out == n_kept else np.full(n_out, -1, dtype=np.int64)
        return out


@dataclass
class Shard:
    file: str
    num_rows: int


@dataclass
class DataPlan:
    """Which shard files each rank reads in one epoch, in order. `shared`: fewer files than ranks,
    so every rank reads them all and keeps its own rows (PositionedViews)."""
    epoch: int
    files: list[list[Shard]] = field(default_factory=list)  # per rank
    shared: bool = False

    def done_files(self, rank: int, rows_done: int) -> list[str]:
        """The files of `rank` fully consumed after `rows_done` rows of its ordered list."""
        done, end = [], 0
        for shard in self.files[rank]:
            end += shard.num_rows
            if end > rows_done:
                break
            done.append(shard.file)
        return done

    def merge_done(self, per_rank: list[list[str]]) -> set[str]:
        """Files done for the run: dealt files once their rank is through them, shared files once
        every rank is."""
        sets = [set(files) for files in per_rank]
        return set.intersection(*sets) if self.shared else set.union(*sets)


def train_shards(exp: dict) -> list[Shard]:
    """The training split's shard files with their row counts, in manifest order."""
    path = split_dir(exp["data"]["root"], exp["data"]["train_split"])
    counts = [s["num_rows"] for s in read_manifest(path)["shards"]]
    return [Shard(f, n) for f, n in zip(shard_files(path), counts)]


def plan_epoch(shards: list[Shard], seed: int, epoch: int, world_size: int, done: set[str] = frozenset()) -> DataPlan:
    """Shuffle the files with (seed, epoch), drop those already done, deal the rest round-robin."""
    order = np.random.default_rng([seed, epoch]).permutation(len(shards))
    todo = [shards[i] for i in order if shards[i].file not in done]
    if 0 < len(todo) < world_size:
        return DataPlan(epoch, [todo] * world_size, shared=True)
    return DataPlan(epoch, [todo[r::world_size] for r in range(world_size)])


def read_blocks(rows: int, files: int, batch_size: int, tasks: int) -> int:
    """How many blocks to read `rows` rows of `files` shard files into: one per BATCHES_PER_BLOCK
    batches, at least one per file, and at least one per views task (as long as each has a batch)."""
    batches = max(1, math.ceil(rows / batch_size))
    return max(files, math.ceil(batches / BATCHES_PER_BLOCK), min(tasks, batches))


def read_shards(files: list[str], columns: list[str], num_blocks: int, **read_args) -> ray.data.Dataset:
    """`ray.data.read_parquet` of the shard files into `num_blocks` blocks (at least one per file),
    rows in file order. Ray Data 2.60's default Parquet reader (DataSourceV2) ignores
    `override_num_blocks`; the V1 reader honours it, so it is switched on for this read only (the
    dataset keeps a copy of the context it was made with)."""
    ctx = ray.data.DataContext.get_current()
    v2 = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(files, columns=columns, override_num_blocks=num_blocks, **read_args)
    finally:
        ctx.use_datasource_v2 = v2


def rank_dataset(exp: dict, plan: DataPlan, rank: int, cpus: float) -> ray.data.Dataset | None:
    """One rank's files of one epoch as a streaming dataset of views, rows in file order; `cpus`
    is this rank's share of the data CPU budget (read and views tasks run within it)."""
    shards = plan.files[rank]
    if not shards:
        return None
    data = exp["data"]
    columns = TRAIN_COLUMNS + (["tags"] if data["tag_vocab"] else [])
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # the position is a row count
    # The rank's CPU share as task sizes and counts (an ExecutionResources limit below one CPU
    # left Ray Data's budget at 0, running one task at a time across the whole pipeline).
    per_task, tasks = min(cpus, 1.0), max(1, int(cpus))
    blocks = read_blocks(sum(s.num_rows for s in shards), len(shards), data["batch_size"], tasks)
    ds = read_shards([s.file for s in shards], columns, blocks, concurrency=min(tasks, len(shards)), num_cpus=per_task)
    # Tasks, not an actor pool: each epoch is a new dataset, and an actor pool's start-up would be
    # paid again every epoch; tasks reuse Ray's idle worker processes.
    views = PositionedViews(views_for(exp, plan.epoch), rank, len(plan.files), plan.shared)
    return ds.map_batches(views, batch_size=data["batch_size"], batch_format="numpy", num_cpus=per_task,
                          compute=ray.data.TaskPoolStrategy(size=tasks))
