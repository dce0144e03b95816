"""torch.distributed helpers that fall back to single-process behaviour."""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` along dim 0, keeping the gradient to each rank's part."""
    if world()[1] == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    rank, size = world()
    if size == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / size
