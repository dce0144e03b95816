"""`tipslab bench step`: one TIPS training step, its throughput, its MFU and where its time goes.

Three ways to run the same step, interleaved so that a busy machine slows each alike:
- `tips_step` as the training loop runs it (jobs/step.py: it reads the loss terms and the gradient
  norm back every step, host synchronisations): the images/s and MFU figures;
- the same step without those reads (no host synchronisation at all): what the step would cost if
  the loop read its losses only every `log_every` steps;
- the same step cut into components by clock marks, each behind a device synchronisation: the time
  per component. The text tower runs inside the student's forward; hooks on it split it out.

Run each size in its own process (`tipslab bench step`) so that its peak memory is its own.
"""
import contextlib
import math
import platform
import resource
import sys
import time

import numpy as np
import torch

from tipslab.models.checkpoint import tips_config
from tipslab.models.objective import TIPSObjective
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

from .flops import flops_per_step
from .step import NonFiniteLossError, param_groups, tips_step

COMPONENTS = ("data_to_device", "student_fwd", "text_fwd", "teacher_fwd", "losses", "backward", "optimizer", "ema")
# Dense bf16 tensor-core peaks from the vendors' data sheets, by a fragment of
# torch.cuda.get_device_name(); the first match wins (PCIe before the SXM default).
GPU_BF16_PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L4", 121e12))


def synthetic_batch(exp: dict, batch_size: int, seed: int = 0) -> dict:
    """A batch of the training views' shapes (random pixels and tokens, masks at the ratio)."""
    g = torch.Generator().manual_seed(seed)
    model, data, loss = exp["model"], exp["data"], exp["loss"]
    size, local, patch = model["image_size"], data["local_crop_size"], model["patch_size"]
    patches = (size // patch) ** 2
    masks = torch.zeros(batch_size, patches, dtype=torch.bool)
    n_masked = int(round(loss["mask_ratio"] * patches))
    for row in masks:
        row[torch.randperm(patches, generator=g)[:n_masked]] = True
    tokens = lambda: torch.randint(1, model["vocab_size"], (batch_size, model["max_text_len"]), generator=g)  # noqa: E731
    return {
        "global_crop": torch.rand(batch_size, 3, size, size, generator=g),
        "local_crops": torch.rand(batch_size, data["local_crops"], 3, local, local, generator=g),
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


def component_step(parts: "StepParts", cpu_batch: dict, clock: Clock | None, *, read_losses: bool, step: int,
                   teacher_temp: float, momentum: float, grad_clip: float) -> None:
    """The sequence of `tips_step` (jobs/step.py), with a clock mark after each component
    (`clock=None`: no marks), and its host reads (the loss terms, the gradient norm) optional.
    Single-process: the cross-rank finiteness check of `tips_step` has nothing to reduce here.
    tests/jobs/test_bench.py checks that it computes exactly what `tips_step` computes."""
    lap = clock.lap if clock else (lambda name: None)
    student, teacher = parts.student, parts.teacher
    batch = to_device(cpu_batch, parts.device)
    lap("data_to_device")
    with parts.autocast():
        out = parts.model(batch)
        lap("student_fwd")
        teacher_out = {}
        if teacher is not None:
            masks = batch["masks"] if student.mim_head is not None else None
            teacher_out = teacher(batch["global_crop"], masks, student.cfg.loss.distill_cls)
        lap("teacher_fwd")
        total, terms = parts.objective(out, teacher_out, teacher_temp)
    if read_losses:
        values = torch.stack([v.detach().float() for v in terms.values()]).tolist()
        if not all(math.isfinite(v) for v in values):
            raise NonFiniteLossError(f"non-finite loss at step {step}: {dict(zip(terms, values))}")
    lap("losses")
    parts.optimizer.zero_grad(set_to_none=True)
    total.backward()
    lap("backward")
    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip or float("inf"))
    parts.optimizer.step()
    if read_losses:  # tips_step returns the gradient norm as a float too: its second host sync
        float(grad_norm)
    lap("optimizer")
    if teacher is not None:
        teacher.update(student, momentum)
    lap("ema")
    if clock:  # the student's forward lap holds the text tower's time: move it to its own line
        clock.laps["student_fwd"] -= clock.text
        clock.laps["text_fwd"] += clock.text


class StepParts:
    """The student, objective, teacher and optimizer of one step, as the training loop builds them."""

    def __init__(self, exp: dict, device: str = "cpu", precision: str = "fp32", fused: bool = False,
                 compile: bool = False):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision: {precision!r} is not fp32 or bf16")
        if precision == "bf16" and torch.device(device).type != "cuda":
            raise ValueError("precision bf16: the training step autocasts to bf16 on cuda only (jobs/step.py)")
        cfg = tips_config(exp)
        self.device = torch.device(device)
        self.precision = precision
        torch.manual_seed(0)
        self.student = TIPSStudent(cfg).to(self.device)
        self.objective = TIPSObjective(cfg).to(self.device)
        self.teacher = EMATeacher(self.student).to(self.device) if self.objective.needs_teacher else None
        self.optimizer = torch.optim.AdamW(param_groups(self.student, exp["train"]["weight_decay"]),
                                           lr=exp["train"]["lr"], fused=fused)
        # torch.compile traces the student's forward; the hooks that time the text tower would break
        # its graph, so a compiled step has no per-component figures (see step_benchmark).
        self.model = torch.compile(self.student) if compile else self.student

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
                   fused: bool | None = None, compile: bool = False) -> dict:
    """Median seconds per step of the three ways to run it (module docstring), after warm-up steps;
    seconds per component; images/s and MFU of the step as the training loop runs it.

    "auto" picks cuda when visible; on cuda bf16 autocast and fused AdamW (the GPU step), on cpu fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    if fused is None:
        fused = device == "cuda"
    parts = StepParts(exp, device, precision, fused, compile)
    dev = parts.device
    cpu_batch = synthetic_batch(exp, batch_size)
    if dev.type == "cuda":
        cpu_batch = {k: v.pin_memory() for k, v in cpu_batch.items()}
    kw = {"teacher_temp": exp["loss"]["teacher_temp"], "momentum": 0.999, "grad_clip": exp["train"]["grad_clip"]}

    def plain(step: int) -> float:
        t0 = time.perf_counter()
        tips_step(parts.model, parts.student, parts.teacher, parts.objective, parts.optimizer,
                  to_device(cpu_batch, dev), step=step, bf16=precision == "bf16", **kw)
        sync(dev)
        return time.perf_counter() - t0

    def nosync(step: int) -> float:
        sync(dev)
        t0 = time.perf_counter()
        component_step(parts, cpu_batch, None, read_losses=False, step=step, **kw)
        sync(dev)
        return time.perf_counter() - t0

    def timed(step: int) -> dict:
        clock = Clock(dev)
        text = parts.student.text
        hooks = [text.register_forward_pre_hook(clock.enter_text), text.register_forward_hook(clock.leave_text)]
        try:
            component_step(parts, cpu_batch, clock, read_losses=True, step=step, **kw)
        finally:
            for h in hooks:
                h.remove()
        return {f"{name}_s": clock.laps[name] for name in COMPONENTS}

    for step in range(3 if compile else 1):  # warm-up: allocator, autotuning, compilation
        plain(step)
    rows = []
    for step in range(repeats):
        rows.append({"step_s": plain(step), "nosync_step_s": nosync(step), **({} if compile else timed(step))})
    median = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    flops = flops_per_step(exp, batch_size=batch_size)
    peak, peak_source = device_peak(dev, precision)
    return {
        "model_size": exp["model"]["size"], "batch_size": batch_size, "device_kind": "gpu" if dev.type == "cuda" else "cpu",
        "device": device_name(dev), "threads": torch.get_num_threads(), "precision": precision, "fused_adamw": fused,
        "compile": compile, "repeats": repeats, **median,
        # Per step pair: the component sum over the plain step it was interleaved with.
        "components_over_step": (float(np.median([sum(r[f"{c}_s"] for c in COMPONENTS) / r["step_s"] for r in rows]))
                                 if not compile else None),
        "images_per_s": batch_size / median["step_s"], "nosync_images_per_s": batch_size / median["nosync_step_s"],
        "flops_per_step": flops, "flops_per_image": flops / batch_size, "peak_flops": peak, "peak_source": peak_source,
        "mfu": flops / median["step_s"] / peak, "nosync_mfu": flops / median["nosync_step_s"] / peak,
        "peak_rss_mb": peak_rss_mb(), "student_params_m": sum(p.numel() for p in parts.student.parameters()) / 1e6,
    }


if __name__ == "__main__":  # python -m tipslab.jobs.bench ARGS_JSON: for `tipslab bench step`
    import json

    args = json.loads(sys.argv[1])
    threads = args.pop("threads", 0)
    if threads:
        torch.set_num_threads(threads)
    print(json.dumps(step_benchmark(**args)))
