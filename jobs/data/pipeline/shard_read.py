"""The read side of the training pipeline: a rank's (epoch, shard file, rows) pieces as a Ray Data
dataset of rows in order, in blocks of about `BATCHES_PER_BLOCK` batches (jobs/data/pipeline/streaming.py
puts the views after it).

Ray Data runs the read in tasks of their own when the views run in actors; such a task's process
imports this module, which therefore imports neither torch nor the views (about 2 s of a fresh
process's start-up on 2 busy cores).
"""

import math
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from tipslab.jobs import storage

# Rows of one read block, in batches: a views actor's unit of work. Fewer batches per block add
# per-call overhead; more delay the first batch and leave CPUs idle when a rank has few rows.
BATCHES_PER_BLOCK = 4


class ShardRows(Datasource):
    """A rank's (epoch, file, rows) pieces in order, each read in one task as the file's first `rows`
    rows of `columns` plus an `epoch` column."""

    def __init__(self, pieces: list[tuple[int, str, int]], columns: list[str]):
        super().__init__()
        self.pieces, self.columns = pieces, columns

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        return [
            ReadTask(
                partial(read_piece, file, self.columns, epoch, rows),
                BlockMetadata(num_rows=rows, size_bytes=None, exec_stats=None, input_files=[file]),
                per_task_row_limit=per_task_row_limit,
            )
            for epoch, file, rows in self.pieces
        ]


def read_piece(file: str, columns: list[str], epoch: int, rows: int) -> list[pa.Table]:
    """The first `rows` rows of a shard file (only the row groups that hold them), with `epoch`."""
    fs, path = storage.resolve(file)
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        groups, end = [], 0
        while end < rows and len(groups) < parquet.num_row_groups:
            end += parquet.metadata.row_group(len(groups)).num_rows
            groups.append(len(groups))
        table = parquet.read_row_groups(groups, columns=columns).slice(0, rows)
    return [table.append_column("epoch", pa.array(np.full(table.num_rows, epoch, np.int64)))]


def read_split(rows: int, batch_size: int) -> int:
    """The blocks each read task's rows (at most `rows`) are split into: about BATCHES_PER_BLOCK
    batches each."""
    return max(1, math.ceil(rows / (BATCHES_PER_BLOCK * batch_size)))


def read_rows(pieces: list[tuple[int, str, int]], columns: list[str], batch_size: int, **read_args) -> ray.data.Dataset:
    """The pieces' rows in order, split into blocks of about BATCHES_PER_BLOCK batches: Ray Data
    splits each read task's output evenly when asked for more blocks than tasks."""
    split = read_split(max(rows for _, _, rows in pieces), batch_size)
    return ray.data.read_datasource(ShardRows(pieces, columns), override_num_blocks=len(pieces) * split, **read_args)
