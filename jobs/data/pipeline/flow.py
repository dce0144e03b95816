"""How Ray Data runs the views (jobs/data/pipeline/streaming.py): its settings for a views dataset,
a pause for its scheduling loop when nothing runs, and each block handed on in the step that finds it.

Ray is pinned (pyproject.toml); the settings and the callback hook are Ray Data's (2.60), checked
by tests/jobs/data/pipeline/test_streaming.py. Measured on 2 cores (3 epochs of 512 scenes at
224 px in tasks, `tipslab bench data`; 200 steps of the tiny experiment, `tipslab train`).
"""

import math
import time

import ray.data
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data._internal.execution.metadata_fetcher import InlineMetadataFetcher

from tipslab.jobs.data.pipeline.batches import EpochBatches
from tipslab.jobs.data.pipeline.shard_read import BATCHES_PER_BLOCK, TASK_BATCHES

# How long Ray Data's scheduling loop sleeps in a step in which no task of the dataset runs.
IDLE_PAUSE_S = 0.02


class PauseWhenIdle(ExecutionCallback):
    """Sleeps IDLE_PAUSE_S at the end of a step of Ray Data's scheduling loop that changed nothing:
    no task submitted or finished, no output made or taken.

    The loop waits (up to 0.1 s) only until a running task has an output ready: when the views are
    held back until the consumer takes what was made (an output ready but not read, or no task
    running) it goes round without a pause, holding the GIL of the process that iterates the
    dataset: the training worker's. In a stage whose views ran ahead of training, the loop took
    more CPU than the training step (py-spy: 40% of the process's samples), and training ran at
    77-83 images/s against 199-217 with the views paced by Ray Data's reservation.
    """

    def __init__(self):
        self.last = None

    def on_execution_step(self, executor) -> None:
        topology = getattr(executor, "_topology", None) or {}
        now = tuple(progress(op.metrics) for op in topology)
        if now == self.last:
            time.sleep(IDLE_PAUSE_S)
        self.last = now


class HandOnAtOnce(ExecutionCallback):
    """Has the executor hand each views block on in the scheduling step that finds it made.

    By default a block's metadata is fetched in a thread of its own and the block handed on only
    in a later step of the loop, which waits up to 0.1 s for another task's output: the first
    batch of a stage reached the consumer 0.25-0.45 s after its views were made (2 cores). Fetched
    in the step (a local object of a few hundred bytes), it is handed on at once.
    """

    def before_execution_starts(self, executor) -> None:
        executor._metadata_fetcher = InlineMetadataFetcher()


def progress(metrics) -> tuple[int, ...]:
    """What an operator has done so far: tasks submitted and finished, outputs made and taken."""
    return (
        metrics.num_tasks_submitted,
        metrics.num_tasks_finished,
        metrics.num_task_outputs_generated,
        metrics.num_outputs_taken,
    )


def views_flow(ds: ray.data.Dataset, batch_bytes: int, workers: int) -> ray.data.Dataset:
    """`ds` (the views map) set to hand its views on in blocks of BATCHES_PER_BLOCK batches as soon as
    they are made and to keep its `workers` busy, in this dataset's own context (a dataset copies Ray
    Data's context when it is made; what is set here leaves the process's other datasets as they were):
    - Rows in order (`preserve_order`): a rank's position in its data is a row count.
    - Ray Data gathers what a task or an actor's call yields into blocks of its target size (128 MiB)
      before it hands them on: a task of 16 batches (about 100 MB at 224 px) left as one block at
      its end, and the training loop waited for a whole task's views before its first batch. A block
      closes once its bytes pass the target and is cut only past 1.5 times it: a target of
      BATCHES_PER_BLOCK - 0.5 batches (`batch_bytes`: a batch's crops and mask; 0 leaves the default)
      closes a block after BATCHES_PER_BLOCK views batches (a call's or a task's last one may hold
      fewer), never in the middle of one. A block a batch paid a block's fixed costs four times
      over (shard_read.BATCHES_PER_BLOCK).
    - A task may run only 2 blocks ahead of the executor's reading its outputs (its generator's
      buffer), and paused when the executor was slow to come round: room for a whole task's batches
      (TASK_BATCHES, in blocks) cut the tasks' summed time from 6.4-6.9 s to 5.9-6.3 s.
    - Ray Data's per-operator reservation of half the resources started the second views task only
      0.5-1 s after the first (one CPU idle at each stage's start): off.
    - Without the reservation, its downstream-capacity policy stops new tasks once the outputs
      waiting pass twice what the consumer holds, which rows in order make routine (the next task's
      batches wait for this one's): held at what `workers` tasks of TASK_BATCHES batches make, the
      bound on the views made ahead (about 420 MB a worker pair at 224 px).
    - PauseWhenIdle: the scheduling loop spins while the views wait for the consumer.
    - HandOnAtOnce: each block handed on in the step that finds it made.
    """
    context = ds.context
    context.execution_options.preserve_order = True
    if batch_bytes:
        context.target_max_block_size = int((BATCHES_PER_BLOCK - 0.5) * batch_bytes)
    context._max_num_blocks_in_streaming_gen_buffer = math.ceil(TASK_BATCHES / BATCHES_PER_BLOCK)
    context.op_resource_reservation_enabled = False
    context.downstream_capacity_backpressure_ratio = float(workers * TASK_BATCHES)
    context.custom_execution_callback_classes = [
        *context.custom_execution_callback_classes,
        PauseWhenIdle,
        HandOnAtOnce,
    ]
    return ds


def stage_batches(ds: ray.data.Dataset | None, batch_size: int, prefetch_batches: int, device="auto") -> EpochBatches:
    """A views dataset's batches as the training loop takes them (and `tipslab bench data` with it):
    whole blocks as torch tensors on `device`, with Ray Data's look-ahead off (it holds each block
    back for the next), taken `prefetch_batches` batches ahead in whole blocks by a thread of their
    own (batches.Ahead), already asked for, and cut into batches of one epoch each. No dataset: no
    batches."""
    blocks = ds.iter_torch_batches(batch_size=None, device=device, prefetch_batches=0) if ds else ()
    return EpochBatches(blocks, batch_size).start(blocks_ahead(prefetch_batches))


def blocks_ahead(batches: int) -> int:
    """The views blocks taken ahead of the training step for `batches` batches ahead
    (`train.prefetch_batches`): whole blocks (`views_flow`), at least one."""
    return max(1, math.ceil(batches / BATCHES_PER_BLOCK))
