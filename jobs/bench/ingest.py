"""Ingestion rows/s per format: ``python -m tipslab.jobs.data.ingest.sources --bench [--n N] [--size PX]``.

Makes the same N JPEG images (photo-like noise, so that they compress like photos) as a folder of
WebDataset tars, CSV, TSV and JSONL tables and a COCO caption file in a temporary folder, ingests
each into local shards in one process and prints the rows per second. Every row is fully decoded on
the way in. ``--parallel`` adds the tars ingested by one Ray task per tar (ingest_parallel.py), on a
local Ray instance with this machine's CPUs; its figure includes starting the tasks' workers.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
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
                for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", caption.encode()),
                                      (f"{key}.json", json.dumps({"key": key}).encode())):
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
    coco = {"images": [{"id": i, "file_name": f"{r['key']}.jpg"} for i, r in enumerate(rows)],
            "annotations": [{"id": 2 * i + j, "image_id": i, "caption": f"{r['caption']} ({j})"}
                            for i, r in enumerate(rows) for j in range(2)]}
    (images / "captions.json").write_text(json.dumps(coco))
    return {"webdataset": tars, "csv": root / "table.csv",
            "tsv": root / "table.tsv", "jsonl": root / "table.jsonl",
            "coco": images / "captions.json"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tipslab.jobs.data.ingest.sources")
    parser.add_argument("--bench", action="store_true", required=True)
    parser.add_argument("--n", type=int, default=300, help="images per format (default 300)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--parallel", action="store_true", help="also time one Ray task per tar")
    parser.add_argument("--tars", type=int, default=4, help="tars the images are split into (default 4)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sources = make_sources(Path(tmp) / "src", args.n, args.size, n_tars=args.tars)
        # One untimed pass first, so that no format pays for the first imports and file caches.
        ingest("csv", str(sources["csv"]), f"{tmp}/warm-up", max_pixels=40_000_000, max_bad_fraction=0.0)
        print(f"ingestion of {args.n} JPEGs of {args.size}x{args.size} px, one process:")
        print(f"{'format':<12}{'rows':>6}{'seconds':>9}{'rows/s':>9}")
        for fmt in FORMATS:
            result = ingest(fmt, str(sources[fmt]), f"{tmp}/out-{fmt}",
                            max_pixels=40_000_000, max_bad_fraction=0.0)
            print(f"{fmt:<12}{result['rows']:>6}{result['seconds']:>9.2f}{result['rows_per_s']:>9.0f}")
        if args.parallel:
            import ray

            from tipslab.jobs.data.ingest.parallel import ingest_webdataset_parallel

            ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
            result = ingest_webdataset_parallel(str(sources["webdataset"]), f"{tmp}/out-parallel",
                                                max_pixels=40_000_000, max_bad_fraction=0.0)
            print(f"{'webdataset, Ray, ' + str(args.tars) + ' tasks':<12}{result['rows']:>6}"
                  f"{result['seconds']:>9.2f}{result['rows_per_s']:>9.0f}")
