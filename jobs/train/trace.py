"""Test hooks of the training loop: which rows each rank trained on, and a digest of the state that
a resume restored. Off unless `TIPSLAB_ROW_TRACE` names a folder."""

import hashlib
import json
import os

import torch

# Set to a folder, every rank appends "epoch key_id" of each row it trains on to a file there:
# how the tests count replayed rows.
ROW_TRACE_ENV = "TIPSLAB_ROW_TRACE"


def state_digest(module_state: dict, optimizer_state: dict) -> str:
    """sha256 over parameters and optimizer state, for checking that a resume restored them.

    Plain state dicts (ddp: `state_dict()`s, optimizer state keyed by parameter index), or whole
    ones keyed by names (fsdp: `parallel.full_state` in the loop, `parallel.read_sharded` of the
    checkpoint's sharded/ folder): the same state gives the same digest either way it was read.
    A DTensor is read whole (a collective)."""
    from tipslab.jobs.train.parallel import unsharded  # FSDP's imports, for the tests' digests only

    h = hashlib.sha256()

    def add(value):
        h.update(unsharded(value.detach()).cpu().contiguous().numpy().tobytes())

    for key in sorted(module_state):
        h.update(key.encode())
        add(module_state[key])
    for pid in sorted(optimizer_state["state"]):
        for name in sorted(optimizer_state["state"][pid]):
            value = optimizer_state["state"][pid][name]
            h.update(f"{pid}.{name}".encode())
            if torch.is_tensor(value):
                add(value)
            else:
                h.update(repr(value).encode())
    return h.hexdigest()


class RowTrace:
    def __init__(self, rank: int):
        folder = os.environ.get(ROW_TRACE_ENV)
        self.path = os.path.join(folder, f"rank{rank}-{os.getpid()}.txt") if folder else None

    def rows(self, epoch: int, ids: torch.Tensor) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write("".join(f"{epoch} {i}\n" for i in ids.tolist()))

    def event(self, **info) -> None:
        if self.path:
            with open(self.path.replace(".txt", ".json"), "a") as f:
                f.write(json.dumps(info) + "\n")
