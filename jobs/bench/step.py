"""`tipslab bench step`: one TIPS training step, its throughput, its MFU and where its time goes.

Two ways to run the same step, interleaved so that a busy machine slows each alike:
- `tips_step` as the training loop runs it (jobs/train/step.py: no host synchronisation inside), `burst`
  steps back to back behind one device synchronisation: the images/s and MFU figures;
- the same step cut into components by clock marks (`tips_step`'s `marks`), each behind a device
  synchronisation: the time per component. The text tower runs inside the student's forward; hooks
  on it split it out.

Run each size in its own process (`tipslab bench step`) so that its peak memory is its own.
"""
import contextlib
import math
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

from tipslab.models.checkpoint import tips_config
from tipslab.models.mim import masked_count
from tipslab.models.objective import TIPSObjective
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

from tipslab.jobs.bench.flops import flops_per_step
from tipslab.jobs.train.step import LossWatch, compile_parts, param_groups, tips_step

COMPONENTS = ("data_to_device", "student_fwd", "text_fwd", "teacher_fwd", "losses", "backward", "optimizer", "ema")
# Dense bf16 tensor-core peaks from the vendors' data sheets, by a fragment of
# torch.cuda.get_device_name(); the first match wins (PCIe before the SXM default).
GPU_BF16_PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L4", 121e12))


def synthetic_batch(exp: dict, batch_size: int, seed: int = 0) -> dict:
    """A batch of the training views' shapes and types (random uint8 pixels and tokens, masks at the ratio)."""
    g = torch.Generator().manual_seed(seed)
    model, data, loss = exp["model"], exp["data"], exp["loss"]
    size, local, patch = model["image_size"], data["local_crop_size"], model["patch_size"]
    patches = (size // patch) ** 2
    masks = torch.zeros(batch_size, patches, dtype=torch.bool)
    n_masked = masked_count(loss["mask_ratio"], patches)
    for row in masks:
        row[torch.randperm(patches, generator=g)[:n_masked]] = True
    tokens = lambda: torch.randint(1, model["vocab_size"], (batch_size, model["max_text_len"]), generator=g)  # noqa: E731
    return {
        "global_crop": torch.randint(0, 256, (batch_size, 3, size, size), generator=g, dtype=torch.uint8),
        "local_crops": torch.randint(0, 256, (batch_size, data["local_crops"], 3, local, local), generator=g,
                                     dtype=torch.uint8),
        "masks": masks, "web_tokens": tokens(), "synthetic_tokens": tokens(),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def timed_step(parts: "StepParts", cpu_batch: dict, clock: Clock, *, step: int, **kw) -> None:
    """One `tips_step` with a clock mark after each component; the text tower's time (measured by
    hooks on it, which the caller registers) moves from the student's forward to its own line."""
    batch = to_device(cpu_batch, parts.device)
    clock.lap("data_to_device")
    tips_step(parts.model, parts.student, parts.teacher, parts.objective, parts.optimizer, batch, step=step,
              bf16=parts.precision == "bf16", watch=parts.watch, marks=clock.lap, **kw)
    clock.laps["student_fwd"] -= clock.text
    clock.laps["text_fwd"] += clock.text


class StepParts:
    """The student, objective, teacher and optimizer of one step, as the training loop builds them."""

    def __init__(self, exp: dict, device: str = "cpu", precision: str = "fp32", fused: bool = False,
                 compile: bool = False):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision: {precision!r} is not fp32 or bf16")
        if precision == "bf16" and torch.device(device).type != "cuda":
            raise ValueError("precision bf16: the training step autocasts to bf16 on cuda only (jobs/train/step.py)")
        cfg = tips_config(exp)
        self.device = torch.device(device)
        self.precision = precision
        torch.manual_seed(0)
        self.student = TIPSStudent(cfg).to(self.device)
        self.objective = TIPSObjective(cfg).to(self.device)
        self.teacher = EMATeacher(self.student).to(self.device) if self.objective.needs_teacher else None
        self.optimizer = torch.optim.AdamW(param_groups(self.student, exp["train"]["weight_decay"]),
                                           lr=exp["train"]["lr"], fused=fused)
        self.watch = LossWatch()
        # torch.compile traces the student's forward; the hooks that time the text tower would break
        # its graph, so a compiled step has no per-component figures (see step_benchmark).
        self.model = torch.compile(self.student) if compile else self.student
        if compile:
            compile_parts(self.teacher, self.objective)

    def autocast(self):
        """As `tips_step` autocasts: the forwards and the objective, not the backward."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` n×n matmuls, after one warm-up: the peak this device (and this
    process's thread count) reaches on the kind of work a transformer is made of."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from): a data-sheet bf16 peak for known GPUs, else measured."""
    if device.type == "cuda" and precision == "bf16":
        name = torch.cuda.get_device_name(device)
        for fragment, peak in GPU_BF16_PEAKS:
            if fragment in name:
                return peak, f"data sheet: {fragment} bf16 dense"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    return matmul_peak(device, dtype, n), f"measured {n}x{n} {precision} matmul peak"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def step_benchmark(exp: dict, batch_size: int, repeats: int = 3, device: str = "auto", precision: str = "auto",
                   fused: bool | None = None, compile: bool = False, burst: int | None = None) -> dict:
    """Seconds per step as the training loop runs it (the median over `repeats` bursts of `burst`
    steps, after warm-up steps), seconds per component (medians of `repeats` marked steps), images/s
    and MFU.

    "auto" picks cuda when visible; on cuda bf16 autocast and fused AdamW (the GPU step), on cpu fp32.
    `burst` defaults to 1 on cpu (each burst interleaved with a marked step) and 10 on cuda (where a
    device synchronisation per step would hide the launch overlap the training loop gets)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    if fused is None:
        fused = device == "cuda"
    parts = StepParts(exp, device, precision, fused, compile)
    dev = parts.device
    burst = burst or (10 if dev.type == "cuda" else 1)
    cpu_batch = synthetic_batch(exp, batch_size)
    if dev.type == "cuda":
        cpu_batch = {k: v.pin_memory() for k, v in cpu_batch.items()}
    kw = {"teacher_temp": exp["loss"]["teacher_temp"], "momentum": 0.999, "grad_clip": exp["train"]["grad_clip"]}

    def plain(step: int) -> float:
        sync(dev)
        t0 = time.perf_counter()
        for i in range(burst):
            tips_step(parts.model, parts.student, parts.teacher, parts.objective, parts.optimizer,
                      to_device(cpu_batch, dev), step=step + i, bf16=precision == "bf16", watch=parts.watch, **kw)
        sync(dev)
        return (time.perf_counter() - t0) / burst

    def timed(step: int) -> dict:
        clock = Clock(dev)
        text = parts.student.text
        hooks = [text.register_forward_pre_hook(clock.enter_text), text.register_forward_hook(clock.leave_text)]
        try:
            timed_step(parts, cpu_batch, clock, step=step, **kw)
        finally:
            for h in hooks:
                h.remove()
        return {f"{name}_s": clock.laps[name] for name in COMPONENTS}

    for step in range(3 if compile else 1):  # warm-up: allocator, autotuning, compilation
        plain(step * burst)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rows = []
    for step in range(repeats):
        rows.append({"step_s": plain(step * burst), **({} if compile else timed(step))})
    parts.watch.check()  # a benchmark of a diverging step would measure nothing
    median = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    flops = flops_per_step(exp, batch_size=batch_size)
    peak, peak_source = device_peak(dev, precision)
    return {
        "model_size": exp["model"]["size"], "batch_size": batch_size, "device_kind": "gpu" if dev.type == "cuda" else "cpu",
        "device": device_name(dev), "threads": torch.get_num_threads(), "precision": precision, "fused_adamw": fused,
        "compile": compile, "repeats": repeats, "burst": burst, **median,
        # Per repeat: the component sum over the step timed right before it.
        "components_over_step": (float(np.median([sum(r[f"{c}_s"] for c in COMPONENTS) / r["step_s"] for r in rows]))
                                 if not compile else None),
        "images_per_s": batch_size / median["step_s"],
        "flops_per_step": flops, "flops_per_image": flops / batch_size, "peak_flops": peak, "peak_source": peak_source,
        "mfu": flops / median["step_s"] / peak,
        "peak_rss_mb": peak_rss_mb(), "student_params_m": sum(p.numel() for p in parts.student.parameters()) / 1e6,
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
