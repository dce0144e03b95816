"""`tipslab bench scenes`: procedural scenes per second on one core, rendering alone and whole
shard rows (PNG encoding of the dense labels too)."""

import time

from tipslab.jobs.data.scenes.generate import scene_row
from tipslab.jobs.data.scenes.render import render_scene


def bench_scenes(size: int = 224, n: int = 100) -> dict:
    """Scenes per second in this process. Rates per CPU-second are given beside wall-clock rates,
    since a busy machine stretches wall time but not the CPU time one core spends."""
    render_scene(0, size=size)  # warm up
    out = {"size": size, "scenes": n}
    for name, fn in (
        ("render", lambda s: render_scene(s, size=size)),
        ("row", lambda s: scene_row(s, "train", size=size)),
    ):
        wall, cpu = time.perf_counter(), time.process_time()
        for s in range(n):
            fn(s)
        out[f"{name}_per_s"] = round(n / (time.perf_counter() - wall), 2)
        out[f"{name}_per_cpu_s"] = round(n / (time.process_time() - cpu), 2)
    return out
