"""Training batches of one rank's stage dataset: whole batches, never two epochs in one.

The stage dataset (jobs/data/pipeline/streaming.py) hands over its views blocks as they come, rows
of several epochs one after another, each with its `epoch`. `EpochBatches` cuts them into batches of
`batch_size` rows of one epoch: a batch inside a block is a slice of it (no copy); one that spans
blocks is joined. An epoch's last rows short of a whole batch are not trained on (every rank steps
alike), nor are the rows a rank still has of an epoch that another rank finished first; both go to
the caller's `skipped` (their bad-row counters still count).
"""

import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


class Ahead:
    """The items of `items`, taken by a thread of their own up to `depth` (at least one) before
    they are asked for; an error of `items` is raised where the item would have been.

    What Ray Data's iterator offers instead (`prefetch_batches`) holds each block back until the
    next ones have come: the first batch of a stage waited for the views of the next
    `prefetch_batches` (0.3 s more on 2 cores). Here an item goes on as soon as it has come, and
    the thread still fetches the next ones (from other nodes too) while the consumer trains.
    Dropped before its end, it stops taking items (at most 0.1 s later, or after the one it waits
    for), so that a dataset no one reads is let go.
    """

    def __init__(self, items: Iterable, depth: int):
        self.out: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.done = False
        stop = threading.Event()
        # The thread holds the iterator, the queue and the event, never self: dropping self stops it.
        threading.Thread(target=take, args=(iter(items), self.out, stop), name="blocks-ahead", daemon=True).start()
        weakref.finalize(self, stop.set)

    def __iter__(self) -> "Ahead":
        return self

    def __next__(self):
        if self.done:
            raise StopIteration
        item = self.out.get()
        if isinstance(item, Ended):
            self.done = True
            if item.error is not None:
                raise item.error
            raise StopIteration
        return item


@dataclass
class Ended:
    error: BaseException | None = None


def take(items: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    """Ahead's thread: `items` into `out`, then their end (or their error), until `stop` is set."""
    try:
        for item in items:
            if not put(out, item, stop):
                return
        end = Ended()
    except BaseException as err:  # raised where the item is taken
        end = Ended(err)
    put(out, end, stop)


def put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """`item` into `out` once it has room; False if `stop` is set first."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def num_rows(rows: dict) -> int:
    return len(rows["epoch"])


def join(parts: list[dict]) -> dict:
    """Rows of several parts, in order (one part: itself, no copy)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    cat = {k: torch.cat if isinstance(v, torch.Tensor) else np.concatenate for k, v in first.items()}
    return {k: cat[k]([p[k] for p in parts]) for k in first}


class EpochBatches:
    """Whole batches of `batch_size` rows of one epoch each, cut from `blocks` (dicts of column
    arrays or tensors with an `epoch` column, in the dataset's order)."""

    def __init__(self, blocks: Iterable[dict], batch_size: int):
        self.blocks, self.batch_size = iter(blocks), batch_size
        self.queue: deque[tuple[int, dict]] = deque()  # runs of rows of one epoch each, in order

    def start(self, ahead: int = 1) -> "EpochBatches":
        """Take the blocks in a thread from now on, up to `ahead` (at least one) before they are
        asked for, and return self: a Ray Data iterator starts its dataset (the read, the views'
        workers) at the first request, so its start-up then overlaps what the caller does before
        the first batch (the model's build). An error of the blocks is raised by `next`."""
        self.blocks = Ahead(self.blocks, ahead)
        return self

    def next(self, epoch: int, skipped: Callable[[dict], None]) -> dict | None:
        """The next whole batch of `epoch`, or None when this rank has none left in it. Rows of
        earlier epochs, and `epoch`'s last rows when they are short of a batch, go to `skipped`."""
        while True:
            while self.queue and self.queue[0][0] < epoch:
                skipped(self.queue.popleft()[1])
            ready = sum(num_rows(rows) for e, rows in self.queue if e == epoch)
            if ready >= self.batch_size:
                return self.cut()
            if (self.queue and self.queue[-1][0] > epoch) or not self.fill():
                while self.queue and self.queue[0][0] == epoch:
                    skipped(self.queue.popleft()[1])
                return None

    def fill(self) -> bool:
        """Queue the next block's rows, one run per epoch; False when there are no more blocks."""
        block = next(self.blocks, None)
        if block is None:
            return False
        epochs = block["epoch"]
        epochs = epochs.cpu().numpy() if isinstance(epochs, torch.Tensor) else np.asarray(epochs)
        starts = [0, *(np.flatnonzero(epochs[1:] != epochs[:-1]) + 1).tolist(), len(epochs)]
        for a, b in zip(starts, starts[1:]):
            if b > a:
                self.queue.append((int(epochs[a]), {k: v[a:b] for k, v in block.items()}))
        return True

    def cut(self) -> dict:
        """A batch from the queue's head, which holds at least one batch of one epoch."""
        parts, need = [], self.batch_size
        while need:
            epoch, rows = self.queue[0]
            n = num_rows(rows)
            if n <= need:
                parts.append(self.queue.popleft()[1])
                need -= n
            else:
                parts.append({k: v[:need] for k, v in rows.items()})
                self.queue[0] = (epoch, {k: v[need:] for k, v in rows.items()})
                need = 0
        return join(parts)
