"""The Ray Data input pipeline of training: each rank streams its own shard files through the views.

Ray Data has no resumable iterator, so the position in the data is kept in our own terms: each
epoch's shard files are shuffled from (seed, epoch) and dealt out to the ranks, every rank reads its
files in order (`preserve_order`), and a checkpoint records which files are fully consumed. A
restart deals out only the files not done yet, so it replays at most the file each rank was in the
middle of (plus the steps after the checkpoint), whatever the number of ranks after the restart.

Parallelism: the views run in a pool of actors (`map_views`), one per CPU of the rank's share (at
least one), each of which builds its tokenizer and views once and then makes the views of one read
block per call. A rank's files are read into about one block per `BATCHES_PER_BLOCK` batches (Ray
Data's `override_num_blocks`, `read_blocks`), so that every actor has blocks to work on and hands
its first batches over early. Ray Data 2.60's default Parquet reader (DataSourceV2) ignores
`override_num_blocks` and packs small shard files into one block that a single actor then works
through alone; `read_shards` reads with the V1 reader, which honours it by splitting each file's
rows into consecutive blocks, in order. The read is light next to the views (decompressing the
file's bytes) and reserves no CPU: the actors hold the rank's whole share for the epoch, and a read
that needed a CPU of its own would compete with them for it (and, on a cluster sized to the share,
wait for it).

The pool is made for each epoch's dataset, so its start-up (a worker process per actor, importing
torch, building the tokenizer and views: 5-7 s on 2 busy cores) is paid once per epoch. An epoch of
fewer than `data.views_actor_rows` rows on a rank (the laptop configs, the tests) runs the same
views in Ray tasks instead, which reuse idle worker processes but unpickle the views with every
block and cannot hand the counters of a block without rows to a later one (below).

Each batch carries `rows_done` (on the last output row of each views batch: the input rows, bad ones
included, that are fully used once that row is trained on); summed over the trained batches it is
the rank's position in its ordered file list. The bad-row counters (BAD_ROW_COLUMNS) ride on the same
row. A views batch left without rows passes its counts on (PositionedViews), so that they are lost
only for a read block without a single good row that is its actor's last of the epoch, or any such
block when the views run as tasks (logged either way).
`key_id` (a stable 63-bit id of the row's key) lets a run be checked for replayed rows; it is -1 in a
views batch that dropped bad rows, where ids can no longer be matched to rows.
"""

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import ray.data

from tipslab.jobs.config import experiment, read_tag_vocab
from tipslab.jobs.data.pipeline.columns import train_columns
from tipslab.jobs.data.pipeline.views import BAD_ROW_COLUMNS, TIPSViews, bad_row_counts, count_columns, view_options
from tipslab.jobs.data.shards.format import read_manifest, shard_files
from tipslab.models.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

POSITION_COLUMNS = ("rows_done", "key_id")
# The columns a views batch counts its input in, on its last row: the bad-row counters, then rows_done.
COUNT_COLUMNS = BAD_ROW_COLUMNS + ("rows_done",)
# Rows of one read block, in batches: a views actor's unit of work. Fewer batches per block add
# per-call overhead; more delay the first batch and leave CPUs idle when a rank has few rows.
BATCHES_PER_BLOCK = 4


def views_actors(cpus: float) -> int:
    """The views actors of a rank with `cpus` CPUs: one per whole CPU, at least one (which then
    reserves the rank's fraction of a CPU)."""
    return max(1, int(cpus))


def split_dir(root: str, split: str) -> str:
    return os.path.join(root, split)


def views_for(exp, epoch: int = 0) -> TIPSViews:
    exp = experiment(exp)
    tag_vocab = exp.data.tag_vocab
    return TIPSViews(
        **view_options(exp),
        epoch=epoch,
        tokenizer=build_tokenizer(exp.model),
        tag_vocab=read_tag_vocab(tag_vocab) if tag_vocab else (),
    )


def key_ids(keys) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(k).encode(), digest_size=8).digest(), "little") >> 1 for k in keys],
        dtype=np.int64,
    )


class PositionedViews:
    """The views of a rank's read blocks plus the position columns (module docstring), as a Ray
    Data callable class: each actor of the pool builds it, and with it the tokenizer and the
    TIPSViews (`make_views()`), once. With `share` (fewer files than ranks), every rank reads the
    same files and keeps the rows whose key id falls to it.

    A call takes one read block whole and yields its views batches of `batch_size` input rows, in
    order. The counts of a batch (the counters of BAD_ROW_COLUMNS, its input rows as `rows_done`)
    go on its last output row; a batch with no output row (every row bad, or another rank's) has
    its counts go on the next batch of the block that has one, or at the end of the block on the
    last that had one, so that `rows_done` stays within its block and never runs ahead of the rows
    trained on. A block with no output row at all hands its counters to this actor's next call,
    and drops its `rows_done` (its file then counts as not done: a replay, never a skip): Ray Data
    may run an actor's calls out of the blocks' order, which sums of counters do not mind but a
    position would. Counters are lost only for such a block that is its actor's last of the epoch
    (logged when the actor ends), or on an actor's failure (Ray Data restarts it, and retries).
    """

    def __init__(self, make_views, batch_size: int, rank: int = 0, world_size: int = 1, share: bool = False):
        self.views: TIPSViews = make_views()
        self.batch_size, self.rank, self.world_size, self.share = batch_size, rank, world_size, share
        self.carried = np.zeros(len(BAD_ROW_COLUMNS), dtype=np.int64)  # counters of blocks without a row

    def batch(self, batch: dict) -> tuple[dict | None, np.ndarray]:
        """The views of one batch with key_id (None when no row is left) and its counts, in
        COUNT_COLUMNS order."""
        n_in = len(batch["key"])
        ids = key_ids(batch["key"])
        if self.share:
            mine = ids % self.world_size == self.rank
            batch, ids = {k: v[mine] for k, v in batch.items()}, ids[mine]
        out, bad = self.views.views(batch)
        counts = np.concatenate([bad_row_counts(bad), [n_in]])
        if out is not None:
            # ids can no longer be matched to rows once bad ones were dropped
            out["key_id"] = ids if len(out["masks"]) == len(ids) else np.full(len(out["masks"]), -1, np.int64)
        return out, counts

    def __call__(self, block: dict):
        counts = np.zeros(len(COUNT_COLUMNS), dtype=np.int64)  # of rows that no output row carries yet
        counts[: len(BAD_ROW_COLUMNS)], self.carried = self.carried, np.zeros_like(self.carried)
        held = None  # a batch is held back until the next one has rows, or the block ends
        n = len(block["key"])
        for start in range(0, n, self.batch_size):
            out, batch_counts = self.batch({k: v[start : start + self.batch_size] for k, v in block.items()})
            counts = counts + batch_counts
            if out is None:
                continue
            if held is not None:
                yield held
            held = out
            held.update(count_columns(COUNT_COLUMNS, counts, len(out["masks"])))
            counts = np.zeros_like(counts)
        if held is None:  # not one row in the block: its counters go with this actor's next call
            self.carried = counts[: len(BAD_ROW_COLUMNS)]
            return
        for name, value in zip(COUNT_COLUMNS, counts):  # the block's last batches had no row
            held[name][-1] += value
        yield held

    def __del__(self):
        carried = getattr(self, "carried", None)
        if carried is not None and carried.any():
            log.warning(
                "views: %d rows of blocks without one good row, last of this actor's epoch, were not counted (%s)",
                carried[0],
                dict(zip(BAD_ROW_COLUMNS, carried.tolist())),
            )


def map_views(
    ds: ray.data.Dataset,
    make_views,
    *,
    batch_size: int,
    cpus: float,
    views_class=PositionedViews,
    actors: bool = True,
    **views_args,
) -> ray.data.Dataset:
    """The views of `ds`'s blocks, one read block per call, rows in order (`preserve_order`): in a
    pool of `views_actors(cpus)` actors of `views_class` (PositionedViews or a subclass), or with
    `actors=False` in as many Ray tasks at a time, each unpickling one instance made here (which
    cannot hand the counters of a block without a good row to a later block: they are logged)."""
    kwargs = dict(make_views=make_views, batch_size=batch_size, **views_args)
    if not actors:
        return ds.map_batches(
            views_class(**kwargs),
            batch_size=None,
            batch_format="numpy",
            num_cpus=min(cpus, 1.0),
            compute=ray.data.TaskPoolStrategy(size=views_actors(cpus)),
        )
    return ds.map_batches(
        views_class,
        fn_constructor_kwargs=kwargs,
        batch_size=None,
        batch_format="numpy",
        num_cpus=min(cpus, 1.0),
        compute=ray.data.ActorPoolStrategy(size=views_actors(cpus)),
    )


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


def train_shards(exp) -> list[Shard]:
    """The training split's shard files with their row counts, in manifest order."""
    data = experiment(exp).data
    path = split_dir(data.root, data.train_split)
    counts = [s["num_rows"] for s in read_manifest(path)["shards"]]
    return [Shard(f, n) for f, n in zip(shard_files(path), counts)]


def plan_epoch(shards: list[Shard], seed: int, epoch: int, world_size: int, done: set[str] = frozenset()) -> DataPlan:
    """Shuffle the files with (seed, epoch), drop those already done, deal the rest round-robin."""
    order = np.random.default_rng([seed, epoch]).permutation(len(shards))
    todo = [shards[i] for i in order if shards[i].file not in done]
    if 0 < len(todo) < world_size:
        return DataPlan(epoch, [todo] * world_size, shared=True)
    return DataPlan(epoch, [todo[r::world_size] for r in range(world_size)])


def read_blocks(rows: int, files: int, batch_size: int, actors: int) -> int:
    """How many blocks to read `rows` rows of `files` shard files into: one per BATCHES_PER_BLOCK
    batches, at least one per file, and at least one per views actor (as long as each has a batch)."""
    batches = max(1, math.ceil(rows / batch_size))
    return max(files, math.ceil(batches / BATCHES_PER_BLOCK), min(actors, batches))


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


def rank_dataset(exp, plan: DataPlan, rank: int, cpus: float) -> ray.data.Dataset | None:
    """One rank's files of one epoch as a streaming dataset of views, rows in file order; `cpus`
    is this rank's share of the data CPU budget (the views actors hold it)."""
    shards = plan.files[rank]
    if not shards:
        return None
    exp = experiment(exp)
    data = exp.data
    columns = train_columns(data.tag_vocab)  # checked for before Ray starts (orchestrator/config.py)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # the position is a row count
    actors = views_actors(cpus)
    rows = sum(s.num_rows for s in shards)
    blocks = read_blocks(rows, len(shards), data.batch_size, actors)
    ds = read_shards([s.file for s in shards], columns, blocks, concurrency=min(actors, len(shards)), num_cpus=0)
    return map_views(
        ds,
        partial(views_for, exp, plan.epoch),
        batch_size=data.batch_size,
        cpus=cpus,
        actors=rows >= data.views_actor_rows,
        rank=rank,
        world_size=len(plan.files),
        share=plan.shared,
    )
