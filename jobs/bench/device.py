"""The device a benchmark ran on: its name, its peak FLOP/s (a data sheet's, or measured), its memory."""

import math
import platform
import resource
import time

import torch

# Dense bf16 tensor-core peaks from the vendors' data sheets, by a fragment of
# torch.cuda.get_device_name(); the first match wins (PCIe before the SXM default).
GPU_BF16_PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L4", 121e12))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
