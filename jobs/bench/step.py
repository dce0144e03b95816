"""`tipslab bench step`: one TIPS training step, its throughput, its MFU and where its time goes.

Two ways to run the same step, interleaved so that a busy machine slows each alike:
- `tips_step` as the training loop runs it (jobs/train/step.py: no host synchronisation inside), `burst`
  steps back to back behind one device synchronisation: the images/s and MFU figures;
- the same step cut into components by clock marks (`tips_step`'s `marks`), each behind a device
  synchronisation: the time per component. The text tower runs inside the student's forward; hooks
  on it split it out.

Run each size in its own process (`tipslab bench step`) so that its peak memory is its own.
"""

import os
import sys
import time

import numpy as np
import torch

from tipslab.jobs.bench import COMPONENTS
from tipslab.jobs.bench.device import device_name, device_peak, peak_rss_mb, sync
from tipslab.jobs.bench.flops import flops_per_step
from tipslab.jobs.config import experiment
from tipslab.jobs.train.step import StepParts, build_step
from tipslab.models.config import masked_count
from tipslab.models.errors import ConfigError


def synthetic_batch(exp, batch_size: int, seed: int = 0) -> dict:
    """A batch of the training views' shapes and types (random uint8 pixels and tokens, masks at the ratio)."""
    g = torch.Generator().manual_seed(seed)
    exp = experiment(exp)
    model, data, loss = exp.model, exp.data, exp.loss
    size, local, patch = model.image_size, data.local_crop_size, model.patch_size
    patches = (size // patch) ** 2
    masks = torch.zeros(batch_size, patches, dtype=torch.bool)
    n_masked = masked_count(loss.mask_ratio, patches)
    for row in masks:
        row[torch.randperm(patches, generator=g)[:n_masked]] = True
    tokens = lambda: torch.randint(1, model.vocab_size, (batch_size, model.max_text_len), generator=g)  # noqa: E731
    return {
        "global_crop": torch.randint(0, 256, (batch_size, 3, size, size), generator=g, dtype=torch.uint8),
        "local_crops": torch.randint(
            0, 256, (batch_size, data.local_crops, 3, local, local), generator=g, dtype=torch.uint8
        ),
        "masks": masks,
        "web_tokens": tokens(),
        "synthetic_tokens": tokens(),
    }


class Clock:
    """Laps between marks, each mark behind a device synchronisation; `text` collects the time
    spent inside the text tower (its hooks call `enter_text`/`leave_text`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.laps = dict.fromkeys(COMPONENTS, 0.0)
        self.text = 0.0
        sync(device)
        self.last = time.perf_counter()

    def now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        t = self.now()
        self.laps[name] += t - self.last
        self.last = t

    def enter_text(self, *_) -> None:
        self._text_start = self.now()

    def leave_text(self, *_) -> None:
        self.text += self.now() - self._text_start


def saved_for_backward_mb(parts: StepParts, batch: dict) -> float:
    """MB the student's forward on `batch` keeps for its backward (autograd's saved tensors, each
    storage once, the weights left out; with train.activation_checkpointing, each block's input
    instead of its insides): what activation checkpointing saves, measured on any device. The graph
    is dropped unused."""
    weights = {p.untyped_storage().data_ptr() for p in parts.student.parameters()}
    storages = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        parts.student(batch)
    return sum(storages.values()) / 1e6


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def timed_step(parts: StepParts, cpu_batch: dict, clock: Clock, *, stage_step: int, step: int) -> None:
    """One step as the loop runs it (`StepParts.step`) with a clock mark after each component; the
    text tower's time (measured by hooks on it, which the caller registers) moves from the student's
    forward to its own line."""
    batch = to_device(cpu_batch, clock.device)
    clock.lap("data_to_device")
    parts.step(batch, stage_step, step, marks=clock.lap)
    clock.laps["student_fwd"] -= clock.text
    clock.laps["text_fwd"] += clock.text


def bench_parts(
    exp, device: str = "cpu", precision: str = "fp32", fused: bool = False, compile: bool = False
) -> StepParts:
    """The training loop's step parts (`build_step`) at a benchmark's precision and compile setting."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision: {precision!r} is not fp32 or bf16")
    if precision == "bf16" and torch.device(device).type != "cuda":
        raise ConfigError("precision bf16: the training step autocasts to bf16 on cuda only (jobs/train/step.py)")
    parts = build_step(exp, device, seed=0, fused=fused)
    parts.bf16 = precision == "bf16"
    # torch.compile traces the student's forward; the hooks that time the text tower would break
    # its graph, so a compiled step has no per-component figures (see step_benchmark).
    if compile:
        parts.compile(experiment(exp).train.compile_mode)
    return parts


class StepTimer:
    """A benchmark's two ways of running the step (module docstring) on one set of parts and batch."""

    def __init__(self, parts: StepParts, cpu_batch: dict, device: torch.device, burst: int):
        self.parts, self.batch, self.device, self.burst = parts, cpu_batch, device, burst
        self.steps = len(parts.sched.lr)  # the schedules' values at step i, as the loop's first steps get them

    def plain(self, step: int) -> float:
        """Seconds per step of a burst run back to back behind one device synchronisation."""
        sync(self.device)
        t0 = time.perf_counter()
        for i in range(self.burst):
            self.parts.step(to_device(self.batch, self.device), (step + i) % self.steps, step + i)
        sync(self.device)
        return (time.perf_counter() - t0) / self.burst

    def marked(self, step: int) -> dict:
        """Seconds per component of one marked step."""
        clock = Clock(self.device)
        text = self.parts.student.text
        hooks = [text.register_forward_pre_hook(clock.enter_text), text.register_forward_hook(clock.leave_text)]
        try:
            timed_step(self.parts, self.batch, clock, stage_step=step % self.steps, step=step)
        finally:
            for h in hooks:
                h.remove()
        return {f"{name}_s": clock.laps[name] for name in COMPONENTS}


def step_benchmark(
    exp,
    batch_size: int,
    repeats: int = 3,
    device: str = "auto",
    precision: str = "auto",
    fused: bool | None = None,
    compile: bool = False,
    burst: int | None = None,
) -> dict:
    """Seconds per step as the training loop runs it (the median over `repeats` bursts of `burst`
    steps, after warm-up steps), seconds per component (medians of `repeats` marked steps), images/s
    and MFU.

    "auto" picks cuda when visible; on cuda bf16 autocast and fused AdamW (the GPU step), on cpu fp32.
    `burst` defaults to 1 on cpu (each burst interleaved with a marked step) and 10 on cuda (where a
    device synchronisation per step would hide the launch overlap the training loop gets)."""
    exp = experiment(exp)
    device = device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    precision = precision if precision != "auto" else "bf16" if device == "cuda" else "fp32"
    fused = device == "cuda" if fused is None else fused
    parts = bench_parts(exp, device, precision, fused, compile)
    dev = torch.device(device)
    cpu_batch = synthetic_batch(exp, batch_size)
    if dev.type == "cuda":
        cpu_batch = {k: v.pin_memory() for k, v in cpu_batch.items()}
    timer = StepTimer(parts, cpu_batch, dev, burst or (10 if dev.type == "cuda" else 1))
    for step in range(3 if compile else 1):  # warm-up: allocator, autotuning, compilation
        timer.plain(step * timer.burst)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rows = [
        {"step_s": timer.plain(step * timer.burst), **({} if compile else timer.marked(step))}
        for step in range(repeats)
    ]
    parts.watch.check()  # a benchmark of a diverging step would measure nothing
    setting = {
        "precision": precision,
        "fused_adamw": fused,
        "compile": compile,
        "compile_mode": exp.train.compile_mode if compile else "",
        # recomputed blocks count once in the MFU (model FLOPs, as the paper-style MFU counts them)
        "activation_checkpointing": exp.train.activation_checkpointing,
        "chunk_rows": exp.loss.chunk_rows,
        "repeats": repeats,
    }
    result = step_result(exp, parts, dev, batch_size, rows, timer.burst, setting)
    # after the peak memory is read: this forward holds a step's activations once more
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=parts.bf16 and dev.type == "cuda"):
        result["student_saved_mb"] = saved_for_backward_mb(parts, to_device(cpu_batch, dev))
    return result


def step_result(
    exp, parts: StepParts, dev: torch.device, batch_size: int, rows: list[dict], burst: int, setting: dict
) -> dict:
    """The figures of `step_benchmark` from its timed rows (medians), with the FLOP count and the
    device's peak: images/s and MFU."""
    median = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    flops = flops_per_step(exp, batch_size=batch_size)
    peak, peak_source = device_peak(dev, setting["precision"])
    return {
        "model_size": exp.model.size,
        "batch_size": batch_size,
        "device_kind": "gpu" if dev.type == "cuda" else "cpu",
        "device": device_name(dev),
        "threads": torch.get_num_threads(),
        **setting,
        "burst": burst,
        **median,
        # Per repeat: the component sum over the step timed right before it.
        "components_over_step": (
            float(np.median([sum(r[f"{c}_s"] for c in COMPONENTS) / r["step_s"] for r in rows]))
            if not setting["compile"]
            else None
        ),
        "images_per_s": batch_size / median["step_s"],
        "flops_per_step": flops,
        "flops_per_image": flops / batch_size,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu": flops / median["step_s"] / peak,
        "peak_rss_mb": peak_rss_mb(),
        "student_params_m": sum(p.numel() for p in parts.student.parameters()) / 1e6,
        "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None,
    }


if __name__ == "__main__":  # python -m tipslab.jobs.bench.step ARGS_JSON: for `tipslab bench step`
    import json

    args = json.loads(sys.argv[1])
    threads = args.pop("threads", 0)
    if threads:
        torch.set_num_threads(threads)
    print(json.dumps(step_benchmark(**args)), flush=True)
    # Compiled steps leave compile workers behind that can hold up the interpreter's exit (seen on
    # an H200 box, 2026-11-30): the result is out, so leave at once.
    os._exit(0)
