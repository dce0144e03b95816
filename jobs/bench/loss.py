"""`tipslab bench loss`: the prototype cross-entropy of L_MIM, plain against chunked (loss.chunk_rows).

Both sides compute the loss of L_MIM (models/mim.py) for `rows` masked patches over `prototypes`
prototypes from bottleneck features of `dim` dimensions, as training does: the teacher's scores
without a gradient, DINO's centring, then forward and backward through the student's prototype
layer. Plain: the student's and the teacher's [rows, prototypes] scores, then the loss
(MIMLoss.forward). Chunked: the features and the prototype weights into MIMLoss.chunked, `chunk_rows`
rows at a time (models/prototype_loss.py).

Peak memory is what each side allocates above what was held before it began (inputs, weights):
on CUDA torch.cuda.max_memory_allocated; on CPU, where torch keeps no allocator statistics, the
running sum of the allocations and frees that torch's profiler records (profile_memory=True). The
time of each side is the median of `repeats` runs after one warm-up, outside the profiler.
"""

import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from tipslab.jobs.bench.device import device_name, sync
from tipslab.models.mim import MIMLoss

STUDENT_TEMP, TEACHER_TEMP = 0.1, 0.04  # DINOv2's (models/config.py)


def loss_inputs(rows: int, prototypes: int, dim: int, device: torch.device, seed: int = 0) -> dict:
    """Unit-norm student and teacher features [rows, dim] and prototype weights [prototypes, dim],
    as the heads make them (model.head_norm_last_layer); the student's need gradients."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g), dim=-1).to(device)  # noqa: E731
    return {
        "features": unit(rows, dim).requires_grad_(),
        "weight": unit(prototypes, dim).requires_grad_(),
        "teacher_features": unit(rows, dim),
        "teacher_weight": unit(prototypes, dim),
    }


def run_loss(inputs: dict, chunk_rows: int, bf16: bool = False) -> float:
    """One forward and backward of L_MIM's cross-entropy, plain (chunk_rows 0) or chunked, under
    bf16 autocast as training on a GPU (jobs/train/step.py) with `bf16`; its value."""
    x, w = inputs["features"], inputs["weight"]
    x.grad = w.grad = None
    loss_fn = MIMLoss(w.shape[0], STUDENT_TEMP, 0.9).to(x.device)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        if chunk_rows:
            teacher = inputs["teacher_features"], inputs["teacher_weight"]
            loss = loss_fn.chunked(x, w, *teacher, TEACHER_TEMP, chunk_rows)
        else:
            with torch.no_grad():
                teacher_scores = F.linear(inputs["teacher_features"], inputs["teacher_weight"])
            loss = loss_fn(F.linear(x, w), teacher_scores, TEACHER_TEMP)
    loss.backward()
    return loss.item()


def peak_bytes(fn, device: torch.device) -> int:
    """The most memory `fn()` held at once above what was allocated when it began."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = []  # (time, bytes: > 0 allocated, < 0 freed), from the profiler's event tree
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    allocations.sort()
    return max(itertools.accumulate((size for _, size in allocations), initial=0))


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_loss(
    rows: int,
    prototypes: int,
    dim: int,
    chunk_rows: int,
    device: str = "cpu",
    repeats: int = 3,
    threads: int = 0,
    bf16: bool = False,
) -> dict:
    """Peak memory (MB) and time (s) of the plain and the chunked loss on the same inputs, their
    ratios, and the two losses' values (they agree to rounding). `bf16`: under bf16 autocast."""
    if min(rows, prototypes, dim, chunk_rows, repeats) < 1:
        raise ValueError("rows, prototypes, dim, chunk_rows and repeats must each be at least 1")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    inputs = loss_inputs(rows, prototypes, dim, dev)
    out = {
        "rows": rows,
        "prototypes": prototypes,
        "dim": dim,
        "chunk_rows": chunk_rows,
        "device": device_name(dev),
        "device_kind": dev.type,
        "threads": torch.get_num_threads(),
        "precision": "bf16" if bf16 else "fp32",
        "scores_mb": rows * prototypes * 4 / 2**20,  # one fp32 [rows, prototypes] tensor, for scale
    }
    for name, chunk in (("plain", 0), ("chunked", chunk_rows)):
        step = lambda c=chunk: run_loss(inputs, c, bf16)  # noqa: E731
        out[f"{name}_loss"] = step()
        inputs["features"].grad = inputs["weight"].grad = None  # freed before the measurement, not inside
        out[f"{name}_peak_mb"] = peak_bytes(step, dev) / 2**20
        out[f"{name}_s"] = timed(step, dev, repeats)
    out["memory_ratio"] = out["plain_peak_mb"] / out["chunked_peak_mb"]  # > 1: the chunked holds less
    out["time_ratio"] = out["chunked_s"] / out["plain_s"]  # > 1: the chunked is slower
    return out
