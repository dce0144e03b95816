"""EpochBatches (jobs/data/pipeline/batches.py): whole batches of one epoch each, cut from blocks of any size."""

import numpy as np
import torch

from tipslab.jobs.data.pipeline.batches import EpochBatches


def block(epochs: list[int], first: int) -> dict:
    return {"epoch": torch.tensor(epochs), "x": torch.arange(first, first + len(epochs))}


def test_batches_never_span_two_epochs_and_short_ends_are_skipped_not_trained():
    # epoch 0: rows 0..4 (5 rows: a batch of 4 and 1 short); epoch 1: rows 5..13 (9 rows, over two blocks)
    batches = EpochBatches([block([0] * 5 + [1] * 3, 0), block([1] * 6, 8)], batch_size=4)
    skipped = []
    assert batches.next(0, skipped.append)["x"].tolist() == [0, 1, 2, 3]
    assert batches.next(0, skipped.append) is None and [s["x"].tolist() for s in skipped] == [[4]]
    skipped.clear()
    assert batches.next(1, skipped.append)["x"].tolist() == [5, 6, 7, 8]  # joined across the two blocks
    assert batches.next(1, skipped.append)["x"].tolist() == [9, 10, 11, 12]
    assert batches.next(1, skipped.append) is None and [s["x"].tolist() for s in skipped] == [[13]]
    assert batches.next(2, skipped.append) is None  # no more blocks


def test_an_epoch_another_rank_finished_first_is_skipped_to_the_next():
    blocks = [block([0] * 12, 0), block([1] * 8, 12)]
    batches, skipped = EpochBatches(blocks, batch_size=4), []
    assert batches.next(0, skipped.append)["x"].tolist() == [0, 1, 2, 3]
    # another rank ran out of epoch 0: this one goes on with epoch 1, its rows of epoch 0 skipped
    assert batches.next(1, skipped.append)["x"].tolist() == [12, 13, 14, 15]
    assert [s["x"].tolist() for s in skipped] == [list(range(4, 12))]


def test_a_batch_inside_a_block_is_a_view_of_it_not_a_copy():
    rows = block([0] * 8, 0)
    first = EpochBatches([rows], batch_size=4).next(0, lambda _: None)
    assert first["x"].data_ptr() == rows["x"].data_ptr()
    arrays = {"epoch": np.zeros(8, np.int64), "x": np.arange(8)}
    second = EpochBatches([arrays], batch_size=4)
    second.next(0, lambda _: None)
    assert np.shares_memory(second.next(0, lambda _: None)["x"], arrays["x"])
