"""The Ray Data input pipeline of training: each rank streams its own shard files through the views,
one dataset for all the epochs of a stage.

Ray Data has no resumable iterator, so the position in the data is kept in our own terms: each
epoch's shard files are shuffled from (seed, epoch) and dealt out to the ranks (`plan_epoch`), every
rank reads its files in order (`preserve_order`), and a checkpoint records the epoch and which of
its files are fully consumed. A restart deals out only the files not done yet, so it replays at most
the file each rank was in the middle of (plus the steps after the checkpoint), whatever the number
of ranks after the restart. A rank reads as many rows of an epoch as the rank with the fewest
(`DataPlan.rows`): the epoch ends for every rank when one runs out (DDP needs the same step count),
so rows past that would be made into views only to be skipped.

One dataset spans the epochs a stage needs (`plan_epochs`, estimated from its steps; a stage that
runs past them, with many bad rows, gets a dataset for the next ones): a rank's per-epoch file lists
follow one another, each row carrying the epoch it is read for (an `epoch` column that seeds its
augmentations, jobs/data/pipeline/views.py), so the views' actor pool (a worker process per actor
importing torch, building the tokenizer and views: 5-20 s on 2 busy cores) starts once per stage,
and the next epoch's views are made while the last batches of this one are trained on. The training
loop cuts the stream into batches that never span two epochs (jobs/data/pipeline/batches.py).

Parallelism: the views run in a pool of actors (`map_views`), one per CPU of the rank's share (at
least one), each of which builds its tokenizer and views once and then makes the views of one read
unit per call. The dataset's input is the rank's read units (jobs/data/pipeline/shard_read.py): each
(epoch, file) cut into units of about `BATCHES_PER_BLOCK` batches, in order, one a block, so that
the actors share a file and each hands its first batches over early. A call reads its unit's rows
itself (`read_unit`): the images' bytes never pass through Ray's object store, and no read task
competes with the views for the rank's CPUs (the actors hold its whole share). A stage of fewer than
`data.views_actor_rows` rows on a rank (the laptop configs, the tests) runs the same views in Ray
tasks instead, which reuse idle worker processes but unpickle the views with every task and cannot
hand the counters of a task's units without rows to a later task (below). A task takes units of
up to `TASK_BATCHES` batches, fewer towards the stage's end (`unit_blocks`), and one task more than
the rank's workers is handed to Ray: Ray starts it the moment a CPU frees, on the worker process
just left (at once where the cluster has a CPU free). Without it a CPU stood idle 0.02-0.25 s
between one task and the next, until Ray Data's loop saw the task end (measured on 2 cores), as an
actor's next call is already queued at the actor. Either way the views leave in blocks of
`BATCHES_PER_BLOCK` batches as soon as they are made (`views_flow`), so a long task does not hold
its first batches back, and the dataset's first batch, a unit of its own, leaves alone.

Each batch carries `rows_done` (on the last output row of each views batch: the input rows, bad ones
included, that are fully used once that row is trained on); summed over an epoch's trained batches
it is the rank's position in that epoch's ordered file list. The bad-row counters (BAD_ROW_COLUMNS)
ride on the same row. A views batch left without rows passes its counts on (PositionedViews), so
that they are lost only for a read unit without a single good row that is its actor's last of the
dataset, or any such unit that is its task's last when the views run as tasks (logged either way).
`key_id` (a stable 63-bit id of the row's key) lets a run be checked for replayed rows; it is -1 in a
views batch that dropped bad rows, where ids can no longer be matched to rows.
"""

import hashlib
import logging
import os
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import ray.data

from tipslab.jobs.config import experiment, read_tag_vocab
from tipslab.jobs.data.pipeline.columns import TRAIN_COLUMNS, train_columns
from tipslab.jobs.data.pipeline.flow import views_flow
from tipslab.jobs.data.pipeline.shard_read import TASK_BATCHES, block_units, read_unit, unit_rows, units_dataset
from tipslab.jobs.data.pipeline.views import (
    BAD_ROW_COLUMNS,
    TIPSViews,
    bad_row_counts,
    count_columns,
    row_bytes,
    view_options,
)
from tipslab.jobs.data.shards.format import read_manifest, shard_files
from tipslab.models.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

# The columns a views batch counts its input in, on its last row: the bad-row counters, then rows_done.
COUNT_COLUMNS = BAD_ROW_COLUMNS + ("rows_done",)
# The most (epoch, file) pieces in one dataset: its read units (a few a piece) are put in the object
# store when the dataset is made. A stage of more epochs than fit gets a dataset for the next ones.
MAX_PIECES = 4096


def views_actors(cpus: float) -> int:
    """The views actors of a rank with `cpus` CPUs: one per whole CPU, at least one (which then
    reserves the rank's fraction of a CPU)."""
    return max(1, int(cpus))


def split_dir(root: str, split: str) -> str:
    return os.path.join(root, split)


def views_for(exp) -> TIPSViews:
    """The experiment's views (a row's epoch comes with it: its `epoch` column)."""
    exp = experiment(exp)
    tag_vocab = exp.data.tag_vocab
    return TIPSViews(
        **view_options(exp),
        tokenizer=build_tokenizer(exp.model),
        tag_vocab=read_tag_vocab(tag_vocab) if tag_vocab else (),
    )


def key_ids(keys) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(k).encode(), digest_size=8).digest(), "little") >> 1 for k in keys],
        dtype=np.int64,
    )


class PositionedViews:
    """The views of a rank's read units plus the position columns (module docstring), as a Ray
    Data callable class: each actor of the pool builds it, and with it the tokenizer and the
    TIPSViews (`make_views()`), once. With `share` (fewer files than ranks: True, or the epochs in
    which it is so, by the rows' `epoch` column), every rank reads the same files and keeps the rows
    whose key id falls to it.

    A call takes read units (jobs/data/pipeline/shard_read.py: one, as the dataset is made), reads
    each unit's rows (`columns`) and yields their views batches of `batch_size` input rows, in
    order (`block`). The counts of a batch (the counters of BAD_ROW_COLUMNS, its input rows as
    `rows_done`) go on its last output row; a batch with no output row (every row bad, or another
    rank's) has its counts go on the next batch of the unit that has one, or at the end of the unit
    on the last that had one, so that `rows_done` stays within its unit and never runs ahead of the
    rows trained on. A unit with no output row at all hands its counters to this actor's next call,
    and drops its `rows_done` (its file then counts as not done: a replay, never a skip): Ray Data
    may run an actor's calls out of the units' order, which sums of counters do not mind but a
    position would. Counters are lost only for such a unit that is its actor's last of the dataset
    (logged when the actor ends), or on an actor's failure (Ray Data restarts it, and retries).
    """

    def __init__(
        self,
        make_views,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        share: bool | frozenset = False,
        columns: tuple[str, ...] = TRAIN_COLUMNS,
    ):
        self.views: TIPSViews = make_views()
        self.batch_size, self.rank, self.world_size, self.share = batch_size, rank, world_size, share
        self.columns = list(columns)
        self.carried = np.zeros(len(BAD_ROW_COLUMNS), dtype=np.int64)  # counters of units without a row

    def batch(self, batch: dict) -> tuple[dict | None, np.ndarray]:
        """The views of one batch with key_id (None when no row is left) and its counts, in
        COUNT_COLUMNS order."""
        n_in = len(batch["key"])
        ids = key_ids(batch["key"])
        if self.share:
            mine = ids % self.world_size == self.rank
            if self.share is not True:  # the rows of epochs whose files are dealt are all this rank's
                mine |= ~np.isin(batch["epoch"], list(self.share))
            batch, ids = {k: v[mine] for k, v in batch.items()}, ids[mine]
        out, bad = self.views.views(batch)
        counts = np.concatenate([bad_row_counts(bad), [n_in]])
        if out is not None:
            # ids can no longer be matched to rows once bad ones were dropped
            out["key_id"] = ids if len(out["masks"]) == len(ids) else np.full(len(out["masks"]), -1, np.int64)
        return out, counts

    def __call__(self, units: dict):
        for epoch, file, start, stop in block_units(units):
            yield from self.block(read_unit(str(file), self.columns, int(epoch), int(start), int(stop)))

    def block(self, block: dict):
        """The views batches of one unit's rows (a numpy batch with an `epoch` column)."""
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
        if held is None:  # not one row in the unit: its counters go with this actor's next call
            self.carried = counts[: len(BAD_ROW_COLUMNS)]
            return
        for name, value in zip(COUNT_COLUMNS, counts):  # the unit's last batches had no row
            held[name][-1] += value
        yield held

    def __del__(self):
        carried = getattr(self, "carried", None)
        if carried is not None and carried.any():
            log.warning(
                "views: %d rows of units without one good row, last of this actor's dataset, were not counted (%s)",
                carried[0],
                dict(zip(BAD_ROW_COLUMNS, carried.tolist())),
            )


def map_views(
    pieces: list[tuple[int, str, int]],
    make_views,
    *,
    batch_size: int,
    cpus: float,
    views_class=PositionedViews,
    actors: bool = True,
    row_bytes: int = 0,
    **views_args,
) -> ray.data.Dataset:
    """The views of the (epoch, file, rows) pieces' read units (`units_dataset`), rows in order
    (`preserve_order`): in a pool of `views_actors(cpus)` actors of `views_class` (PositionedViews
    or a subclass), one unit a call; or with `actors=False` in as many Ray tasks at a time (and one
    more, waiting for a CPU), up to TASK_BATCHES batches of units a task (`unit_blocks`), each task
    unpickling one instance made here (which cannot hand the counters of its units without a good
    row to a later task: they are logged). `row_bytes` (`views.row_bytes`) sizes the output blocks:
    BATCHES_PER_BLOCK views batches a block (`views_flow`)."""
    kwargs = dict(make_views=make_views, batch_size=batch_size, **views_args)
    workers = views_actors(cpus)
    if not actors:
        rows = unit_rows(pieces, batch_size, TASK_BATCHES, workers)
        ds = units_dataset(rows).map_batches(
            views_class(**kwargs),
            batch_size=None,
            batch_format="numpy",
            num_cpus=min(cpus, 1.0),
            # one task waits for a CPU (above); never more than the rows (Ray Data warns of it)
            compute=ray.data.TaskPoolStrategy(size=min(workers + 1, len(rows))),
        )
    else:
        ds = units_dataset(unit_rows(pieces, batch_size)).map_batches(
            views_class,
            fn_constructor_kwargs=kwargs,
            batch_size=None,
            batch_format="numpy",
            num_cpus=min(cpus, 1.0),
            compute=ray.data.ActorPoolStrategy(size=workers),
        )
    return views_flow(ds, batch_size * row_bytes, workers)


@dataclass
class Shard:
    file: str
    num_rows: int


@dataclass
class DataPlan:
    """Which shard files each rank reads in one epoch, in order, and how many of their rows (`rows`:
    the same for every rank, the fewest any rank was dealt; a rank's last files may be read in part
    or not at all). `shared`: fewer files than ranks, so every rank reads them all and keeps its
    own rows (PositionedViews)."""

    epoch: int
    files: list[list[Shard]] = field(default_factory=list)  # per rank
    shared: bool = False
    rows: int = 0

    def pieces(self, rank: int) -> list[tuple[str, int]]:
        """(file, rows read from its start) of `rank`, in order, within the epoch's `rows`."""
        out, left = [], self.rows
        for shard in self.files[rank]:
            if left <= 0:
                break
            out.append((shard.file, min(shard.num_rows, left)))
            left -= shard.num_rows
        return out

    def batches(self, batch_size: int) -> int:
        """The whole batches each rank can make of the epoch if no row is bad (shared: about)."""
        return self.rows // (len(self.files) if self.shared else 1) // batch_size

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
    """Shuffle the files with (seed, epoch), drop those already done, deal the rest round-robin; every
    rank reads as many rows as the rank dealt the fewest."""
    order = np.random.default_rng([seed, epoch]).permutation(len(shards))
    todo = [shards[i] for i in order if shards[i].file not in done]
    if 0 < len(todo) < world_size:
        return DataPlan(epoch, [todo] * world_size, shared=True, rows=sum(s.num_rows for s in todo))
    files = [todo[r::world_size] for r in range(world_size)]
    return DataPlan(epoch, files, rows=min(sum(s.num_rows for s in f) for f in files))


def plan_epochs(
    shards: list[Shard], seed: int, first: int, world_size: int, done: set[str], batch_size: int, steps: int
) -> list[DataPlan]:
    """The plans of the epochs one dataset spans, from `first` (whose files `done` are left out):
    enough for `steps` whole batches if no row is bad, and one more (a few bad rows cost a batch or
    two, a second dataset only after many), at most MAX_PIECES files per rank in all."""
    plans, batches, files = [], 0, 0
    while True:
        plan = plan_epoch(shards, seed, first + len(plans), world_size, done if not plans else frozenset())
        files += max(len(f) for f in plan.files)
        if plans and files > MAX_PIECES:
            return plans
        plans.append(plan)
        if batches >= steps:
            return plans
        batches += max(plan.batches(batch_size), 1)  # an epoch without a batch ends the stage (the loop says why)


def stage_dataset(
    exp, plans: list[DataPlan], rank: int, cpus: float, views_class=PositionedViews
) -> ray.data.Dataset | None:
    """One rank's files of the planned epochs, one after another, as a streaming dataset of views,
    rows in order; `cpus` is this rank's share of the data CPU budget (the views actors hold it)."""
    pieces = [(plan.epoch, file, rows) for plan in plans for file, rows in plan.pieces(rank)]
    if not pieces:
        return None
    exp = experiment(exp)
    data = exp.data
    columns = train_columns(data.tag_vocab)  # checked for before Ray starts (orchestrator/config.py)
    return map_views(
        pieces,
        partial(views_for, exp),
        batch_size=data.batch_size,
        cpus=cpus,
        views_class=views_class,
        actors=sum(rows for _, _, rows in pieces) >= data.views_actor_rows,
        row_bytes=row_bytes(**view_options(exp)),
        rank=rank,
        world_size=len(plans[0].files),
        share=frozenset(plan.epoch for plan in plans if plan.shared),
        columns=tuple(columns),
    )
