"""Procedural scenes into Parquet shards: one row per scene with every eval column, the seeds of
each split (never overlapping), and the manifest's source string."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from tipslab.jobs import storage
from tipslab.jobs.data.scenes import captions
from tipslab.jobs.data.scenes.geometry import SHAPES
from tipslab.jobs.data.scenes.layout import COLOURS, MATERIALS
from tipslab.jobs.data.scenes.render import render_scene
from tipslab.jobs.data.shards.format import encode_normals, encode_png, write_manifest, write_shard
from tipslab.models.errors import ConfigError

SPLIT_STRIDE = 10_000_000
SPLIT_OFFSETS = {"train": 0, "probe_train": SPLIT_STRIDE, "probe_test": 2 * SPLIT_STRIDE}
_TAG_ALIASES = {
    **{w: w for w in (*SHAPES, *COLOURS, *MATERIALS, "striped", "checkered")},
    **{captions.plural(s): s for s in SHAPES},
    "metallic": "metal",
    "shiny": "metal",
}


def caption_tags(*captions_: str | None) -> list[str]:
    """Sorted shape, colour, material and pattern words in any caption (plurals folded)."""
    words = set()
    for c in captions_:
        for w in re.findall(r"[a-z]+", (c or "").lower()):
            if w in _TAG_ALIASES:
                words.add(_TAG_ALIASES[w])
    return sorted(words)


def scene_row(seed: int, split: str, size: int = 112, **kw) -> dict:
    """One row in the shard schema, with every eval column (see jobs/data/shards/format.py for the encodings)."""
    s = render_scene(seed, size=size, **kw)
    depth_mm = np.clip(np.rint(s["depth"] * 1000.0), 0, 65535).astype(np.uint16)
    return {
        "key": f"{split}-{seed:08d}",
        "image": encode_png(s["image"]),
        "web_caption": s["web_caption"],
        "synthetic_caption": s["synthetic_caption"],
        "tags": caption_tags(s["web_caption"], s["synthetic_caption"]),
        "width": size,
        "height": size,
        "label": s["label"],
        "segmentation": encode_png(s["segmentation"]),
        "depth": encode_png(depth_mm),
        "instances": encode_png(s["instances"]),
        "normals": encode_normals(s["normals"]),
    }


def split_seeds(n: int, *, split: str = "train", seed: int = 0) -> range:
    """The scene seeds of a split; different splits never overlap."""
    if split not in SPLIT_OFFSETS:
        raise ConfigError(f"unknown split {split!r}; expected one of {sorted(SPLIT_OFFSETS)}")
    if n < 0 or seed < 0 or seed + n > SPLIT_STRIDE:
        raise ConfigError(f"need 0 <= seed and seed + n <= {SPLIT_STRIDE}, got seed={seed}, n={n}")
    start = SPLIT_OFFSETS[split] + seed
    return range(start, start + n)


def scenes_source(split: str, seed: int, size: int, web_noise: float = 0.3, max_objects: int = 4) -> str:
    """The manifest's `source`: everything the rows depend on besides the code."""
    return f"scenes:{split}:seed={seed}:size={size}:web_noise={web_noise}:max_objects={max_objects}"


def _write_chunk(out_dir: str, index: int, first_seed: int, count: int, kw: dict, on_row=None) -> dict:
    split, rows = kw["split"], []
    for s in range(first_seed, first_seed + count):
        rows.append(scene_row(s, split, size=kw["size"], web_noise=kw["web_noise"], max_objects=kw["max_objects"]))
        if on_row:
            on_row()
    return write_shard(rows, out_dir, index)


def generate_scenes(
    out_dir: str,
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    size: int = 112,
    rows_per_shard: int = 256,
    web_noise: float = 0.3,
    max_objects: int = 4,
    parallel: bool | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Render `n` scenes of `split` into Parquet shards in `out_dir` (local or s3://); return the
    manifest. With Ray initialised (or `parallel=True`), one Ray task renders and writes each
    shard; the bytes are the same as the serial path's, shard for shard.

    `on_progress(done, n)` hears of the scenes rendered: at the start, then after each scene (one
    process) or each shard (Ray tasks)."""
    if rows_per_shard < 1:
        raise ConfigError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if not 0.0 <= web_noise <= 1.0:
        raise ConfigError(f"web_noise must be in [0, 1], got {web_noise}")
    seeds = split_seeds(n, split=split, seed=seed)
    chunks = [seeds[i : i + rows_per_shard] for i in range(0, n, rows_per_shard)]
    kw = {"split": split, "size": size, "web_noise": web_noise, "max_objects": max_objects}
    storage.make_dirs(out_dir)
    report = on_progress or (lambda done, total: None)
    report(0, n)
    if parallel is None:
        import ray

        parallel = ray.is_initialized()
    if parallel and chunks:
        import ray

        env = storage.aws_env()  # Ray workers do not see variables set after ray.init
        task = ray.remote(num_cpus=1)(_write_chunk)
        if env:
            task = task.options(runtime_env={"env_vars": env})
        refs = [task.remote(out_dir, i, c.start, len(c), kw) for i, c in enumerate(chunks)]
        index = {ref: i for i, ref in enumerate(refs)}
        shards, pending, done = [None] * len(refs), list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = index[ready[0]]
            shards[i] = ray.get(ready[0])
            done += len(chunks[i])
            report(done, n)
    else:
        rendered = 0

        def on_row() -> None:
            nonlocal rendered
            rendered += 1
            report(rendered, n)

        shards = [_write_chunk(out_dir, i, c.start, len(c), kw, on_row) for i, c in enumerate(chunks)]
    return write_manifest(out_dir, shards, source=scenes_source(split, seed, size, web_noise, max_objects))
