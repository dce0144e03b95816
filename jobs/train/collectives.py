"""The few collectives the training loop needs, each a no-op with one rank."""

import torch
import torch.distributed as dist

from tipslab.models.distributed import world


def gather(obj):
    """Every rank's `obj`, in rank order."""
    if world()[1] == 1:
        return [obj]
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: list[float], device) -> list[float]:
    """`values` summed over ranks, in one float64 all-reduce on `device`."""
    x = torch.tensor(values, dtype=torch.float64, device=device)
    if world()[1] > 1:
        dist.all_reduce(x)
    return x.tolist()


def all_have(flag: bool, device) -> bool:
    """Whether every rank has `flag`."""
    if world()[1] == 1:
        return flag
    # The loop's one read of the device per step, with several ranks: they must agree on the epoch's end.
    x = torch.tensor([float(flag)], device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return x.item() >= 1
