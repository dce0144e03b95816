"""The read side of the training pipeline: a rank's (epoch, shard file, rows) pieces cut into read
units of about `BATCHES_PER_BLOCK` batches each (the dataset's first batch a unit of its own), as a
Ray Data dataset of units in order, one unit a block (or, for a pool of tasks, up to `TASK_BATCHES`
batches of units a block); the views (jobs/data/pipeline/streaming.py) read each unit's rows
themselves (`read_unit`).

Reading in the views, rather than in Ray Data read tasks ahead of them, keeps the images' bytes out
of Ray's object store (a read task put each file's bytes there, and the views actor copied them out
again: about a quarter of the views' own CPU time at 224 px) and leaves the CPUs to the views
while their actors start (the read tasks ran ahead, all of a stage's files, while the actors were
importing torch). A unit of a file with one row group (the shards' layout) reads that group whole;
the units of one file may go to different views actors, so a file can be decoded once per unit,
which costs little next to its views (decoding 256 scenes of 224 px: a few ms, their views: about
a second of CPU).
"""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockAccessor

from tipslab.jobs import storage
from tipslab.models.errors import DataError

# Rows of one read unit, in batches: a views actor's call, and the views blocks handed to training
# (flow.views_flow). Each block costs its worker, the raylet and the iterating process a few ms
# whatever its size (the put, its metadata, its report to the owner, its `ray.get`). Measured on 2
# cores over 10 epochs of 512 scenes at 224 px in tasks, against the DataLoader in the same run (5
# pairs a setting): a block a batch 1.00x and 1.01x, 2 batches 1.05x and 1.06x, 4 batches 1.08x and
# 1.10x; from a block a batch to 4, the workers' CPU fell from 18.2 to 17.5 s and the iterating
# process's from 1.02 to 0.70 s. More batches a block delay the first batch of a call or a task by a
# batch's views each, which the dataset's first unit, a batch alone (`read_units`), keeps off a
# stage's first step; fewer leave CPUs idle when a rank has few rows.
BATCHES_PER_BLOCK = 4
# The most rows of one Ray task's work where the views run in tasks, in batches: its units, one
# input block (`unit_blocks` makes the last ones smaller). Fewer, longer tasks pay less of what a task
# costs to start (the views unpickled; a CPU idle 0.1-0.25 s between tasks until `map_views` began to
# hand Ray one task more than the workers). At 224 px 32 batches of 32 are about 3 CPU-s of views;
# measured on 2 cores over 10 epochs of 512 scenes, 465 images/s on average against 451 with 16 (six
# runs each, alternating).
# Rows in order hold a task's batches until the task before it is done, so a stage in tasks keeps
# up to its workers' tasks of views waiting (`flow.views_flow`): about 420 MB for 2 at 224 px.
TASK_BATCHES = 32
UNIT_COLUMNS = ("epoch", "file", "start", "stop")  # a read unit: rows [start, stop) of a file, for an epoch


def read_split(rows: int, batch_size: int) -> int:
    """The units a piece of `rows` rows is cut into: about BATCHES_PER_BLOCK batches each."""
    return max(1, math.ceil(rows / (BATCHES_PER_BLOCK * batch_size)))


def read_units(pieces: list[tuple[int, str, int]], batch_size: int) -> list[dict]:
    """The (epoch, file, start, stop) units of the pieces, in order: each piece's first `rows` rows
    cut into `read_split` units of whole batches (the last may be short), the first piece's first
    batch a unit of its own (its views block leaves as soon as that batch is made: a stage's first
    step waits for one batch's views, not a unit's)."""
    units = []
    for epoch, file, rows in pieces:
        start = batch_size if not units and rows > batch_size else 0
        if start:
            units.append(dict(zip(UNIT_COLUMNS, (epoch, file, 0, start))))
        left = rows - start
        step = math.ceil(math.ceil(left / read_split(left, batch_size)) / batch_size) * batch_size
        for first in range(start, rows, step):
            units.append(dict(zip(UNIT_COLUMNS, (epoch, file, first, min(first + step, rows)))))
    return units


def unit_blocks(units: list[dict], rows: int = 0, workers: int = 1) -> list[list[dict]]:
    """The units in blocks, in order: one a block, or with `rows` the first unit alone (the stage's
    first batch: `read_units`), then as many a block as hold the rows left over the `workers`, at
    most `rows` rows, at least one unit (guided self-scheduling: the last
    blocks are small, so that the workers finish about together rather than one of them running a
    whole block alone at the end; measured on 2 cores, 3 epochs of 512 scenes: 3.44-3.75 s, where
    the rows left over twice the workers, more and smaller tasks, took 3.64-3.77 s)."""
    if not rows:
        return [[unit] for unit in units]
    left = sum(unit["stop"] - unit["start"] for unit in units)
    blocks, block, held = [], [], 0
    for unit in units:
        if not block:
            target = min(rows, left / workers) if blocks else 0
        block.append(unit)
        held += unit["stop"] - unit["start"]
        if held >= target:
            blocks.append(block)
            block, left, held = [], left - held, 0
    return blocks + [block] if block else blocks


def unit_rows(
    pieces: list[tuple[int, str, int]], batch_size: int, block_batches: int = 0, workers: int = 1
) -> list[dict]:
    """The pieces' read units in order, a row each: a unit (its UNIT_COLUMNS), or with
    `block_batches` (a pool of `workers` tasks, a row a task) the units of up to `block_batches`
    batches (`unit_blocks`), each column a list. `block_units` reads either."""
    units = read_units(pieces, batch_size)
    if block_batches:
        blocks = unit_blocks(units, block_batches * batch_size, workers)
        units = [{c: [unit[c] for unit in block] for c in UNIT_COLUMNS} for block in blocks]
    return units


def units_dataset(rows: list[dict]) -> ray.data.Dataset:
    """`unit_rows` as a dataset in order, one block a row."""
    # Ray Data builds each block in this process (about 1 ms a block on 2 cores; lists cost more)
    return ray.data.from_items(rows, override_num_blocks=len(rows))


def block_units(batch: dict):
    """The (epoch, file, start, stop) units of a numpy batch of `units_dataset`'s rows, in order."""
    columns = [batch[c] for c in UNIT_COLUMNS]
    if len(columns[0]) and np.ndim(columns[0][0]) == 0:  # a unit a row
        yield from zip(*columns)
        return
    for row in zip(*columns):
        yield from zip(*row)


def read_unit(file: str, columns: list[str], epoch: int, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows [start, stop) of a shard file (read from the row groups that hold them), as a numpy
    batch of `columns` plus `epoch`: the batch Ray Data would hand a `batch_format="numpy"` call."""
    try:
        table = read_rows(file, columns, start, stop)
    except (OSError, pa.ArrowException) as err:  # a file gone or not Parquet: named, not just "<Buffer>"
        raise DataError(f"shard file {file}: cannot read its rows {start}..{stop - 1}: {err}") from err
    table = table.append_column("epoch", pa.array(np.full(table.num_rows, epoch, np.int64)))
    return BlockAccessor.for_block(table).to_batch_format("numpy")


def read_rows(file: str, columns: list[str], start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of `columns` of a Parquet file, from the row groups that hold them."""
    fs, path = storage.resolve(file)
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        groups, first, end = [], 0, 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if end + rows <= start:
                first = end + rows
            elif end < stop:
                groups.append(group)
            end += rows
        return parquet.read_row_groups(groups, columns=columns).slice(start - first, stop - start)
