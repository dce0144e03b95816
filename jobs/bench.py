"""Benchmarks that print figures: one TIPS training step (forward + backward + update), in-process.

Run each size in its own process (`tipslab bench step`) so that its peak memory is its own.
"""
import resource
import sys
import time

import numpy as np
import torch

from tipslab.models.checkpoint import tips_config
from tipslab.models.objective import TIPSObjective
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

from .step import tips_step


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


def step_benchmark(exp: dict, batch_size: int, repeats: int = 3, device: str = "cpu") -> dict:
    """Seconds per step (median of `repeats` after one warm-up step) and the process's peak RSS."""
    cfg = tips_config(exp)
    torch.manual_seed(0)
    student = TIPSStudent(cfg).to(device)
    objective = TIPSObjective(cfg).to(device)
    teacher = EMATeacher(student).to(device) if objective.needs_teacher else None
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    batch = {k: v.to(device) for k, v in synthetic_batch(exp, batch_size).items()}
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        tips_step(student, student, teacher, objective, optimizer, batch, teacher_temp=cfg.loss.teacher_temp,
                  momentum=0.999, grad_clip=1.0, step=i)
        if device != "cpu":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in student.parameters())
    return {"size": cfg.model.size, "batch_size": batch_size, "device": device, "threads": torch.get_num_threads(),
            "step_s": float(np.median(times)), "images_per_s": batch_size / float(np.median(times)),
            "peak_rss_mb": peak_rss_mb(), "student_params_m": params / 1e6}


if __name__ == "__main__":  # python -m tipslab.jobs.bench CONFIG_JSON BATCH REPEATS: for `tipslab bench step`
    import json

    print(json.dumps(step_benchmark(json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
