"""`tipslab bench ingest`: ingestion rows/s per format.

Makes the same N JPEG images (photo-like noise, so that they compress like photos) as a folder of
WebDataset tars, CSV, TSV and JSONL tables and a COCO caption file in a temporary folder, ingests
each into local shards in one process and prints the rows per second. Every row is fully decoded on
the way in. ``--parallel`` adds the tars ingested by one Ray task per tar (jobs/data/ingest/parallel.py);
its figure includes starting the tasks' workers.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from tipslab.jobs.data.ingest.sources import FORMATS, ingest


def photo_jpeg(rng: np.random.Generator, size: int) -> bytes:
    from PIL import Image

    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
    noise = rng.normal(0, 8, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_sources(root: Path, n: int, size: int, n_tars: int = 4, seed: int = 0) -> dict[str, Path]:
    """The same n captioned images in every format (the tars: n_tars of them in one folder);
    returns format -> source path."""
    rng = np.random.default_rng(seed)
    images, tars = root / "images", root / "tars"
    images.mkdir(parents=True)
    tars.mkdir()
    rows = []
    for t in range(n_tars):
        with tarfile.open(tars / f"{t:05d}.tar", "w") as tar:
            for i in range(t, n, n_tars):
                key, data = f"{i:09d}", photo_jpeg(rng, size)
                caption = f"a photo of a red cube, number {i}"
                (images / f"{key}.jpg").write_bytes(data)
                rows.append({"key": key, "image": f"images/{key}.jpg", "caption": caption})
                for name, payload in (
                    (f"{key}.jpg", data),
                    (f"{key}.txt", caption.encode()),
                    (f"{key}.json", json.dumps({"key": key}).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    for fmt, delimiter in (("csv", ","), ("tsv", "\t")):
        with open(root / f"table.{fmt}", "w", newline="") as f:
            writer = csv.DictWriter(f, ["key", "image", "caption"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    with open(root / "table.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    coco = {
        "images": [{"id": i, "file_name": f"{r['key']}.jpg"} for i, r in enumerate(rows)],
        "annotations": [
            {"id": 2 * i + j, "image_id": i, "caption": f"{r['caption']} ({j})"}
            for i, r in enumerate(rows)
            for j in range(2)
        ],
    }
    (images / "captions.json").write_text(json.dumps(coco))
    return {
        "webdataset": tars,
        "csv": root / "table.csv",
        "tsv": root / "table.tsv",
        "jsonl": root / "table.jsonl",
        "coco": images / "captions.json",
    }


def bench_ingest(n: int = 300, size: int = 224, tars: int = 4, parallel: bool = False) -> dict:
    """Rows/s of each format's ingestion of the same `n` images; with `parallel`, also the tars by one
    Ray task per tar (on the Ray instance the caller started). {"formats": {fmt: {rows, seconds,
    rows_per_s}}, ...}."""
    out = {"n": n, "size": size, "tars": tars, "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sources = make_sources(Path(tmp) / "src", n, size, n_tars=tars)
        # One untimed pass first, so that no format pays for the first imports and file caches.
        ingest("csv", str(sources["csv"]), f"{tmp}/warm-up", max_pixels=40_000_000, max_bad_fraction=0.0)
        runs = {
            fmt: lambda fmt=fmt: ingest(
                fmt, str(sources[fmt]), f"{tmp}/out-{fmt}", max_pixels=40_000_000, max_bad_fraction=0.0
            )
            for fmt in FORMATS
        }
        if parallel:
            from tipslab.jobs.data.ingest.parallel import ingest_webdataset_parallel

            runs[f"webdataset, Ray, {tars} tasks"] = lambda: ingest_webdataset_parallel(
                str(sources["webdataset"]), f"{tmp}/out-parallel", max_pixels=40_000_000, max_bad_fraction=0.0
            )
        for name, run in runs.items():
            result = run()
            out["formats"][name] = {k: result[k] for k in ("rows", "seconds", "rows_per_s")}
    return out
