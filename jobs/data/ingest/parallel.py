"""Parallel ingestion of WebDataset tars: one Ray task per tar, bad-row counts summed by the driver.

Each task streams its tar, checks every row (ingest.make_row) and writes its own shard files,
named from the tar's position so that tasks never collide (tar ``i`` writes shards
``i * SHARDS_PER_TAR + j``); the driver then writes one manifest listing them in tar order. Every
task stops on its own past the bad-row fraction (after ``MIN_ROWS_BEFORE_STOP`` of its rows); the
summed counts get the final check. Duplicate keys are caught within a tar (img2dataset's keys
embed the tar's number, so they cannot repeat across tars).
"""

from __future__ import annotations

import os
import time

import ray

from tipslab.jobs.data.ingest.sources import checked_rows, read_join, read_webdataset, tar_paths
from tipslab.jobs.data.shards.format import write_manifest, write_shard
from tipslab.jobs.data.shards.rows import KEPT_KEYS, BadRow, BadRows
from tipslab.jobs.storage import aws_env, make_dirs
from tipslab.models.errors import DataError

#: Shard numbers reserved for each tar (10,000 x 256 rows: far more than an img2dataset tar holds).
SHARDS_PER_TAR = 10_000


def _ingest_tar(
    index: int, tar: str, out: str, max_pixels: int, max_bad_fraction: float, joined: dict | None, rows_per_shard: int
) -> tuple[list[dict], dict, list[BadRow], int]:
    bad, errors, keys, shards, batch, used_join = BadRows(), [], set(), [], [], 0

    def flush() -> None:
        if len(shards) >= SHARDS_PER_TAR:
            raise DataError(f"{tar} makes more than {SHARDS_PER_TAR} shards; raise rows_per_shard")
        shards.append(write_shard(batch, out, index * SHARDS_PER_TAR + len(shards)))
        batch.clear()

    def keep(err: BadRow) -> None:
        if len(errors) < KEPT_KEYS:
            errors.append(err)

    for row in checked_rows(read_webdataset(tar), bad, keys, max_pixels, max_bad_fraction, joined, keep):
        used_join += joined is not None and row["key"] in joined
        batch.append(row)
        if len(batch) >= rows_per_shard:
            flush()
    if batch:
        flush()
    return shards, bad.to_dict(), errors, used_join


def _gather(refs: list, on_progress) -> list:
    """The tasks' results in the order of `refs`, each counted as it comes."""
    results, pending, seen = {}, list(refs), 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        results[ready[0]] = ray.get(ready[0])
        seen += results[ready[0]][1]["rows_seen"]
        if on_progress:
            on_progress(seen, None)
    return [results[ref] for ref in refs]


def ingest_webdataset_parallel(
    src: str,
    out: str,
    *,
    max_pixels: int,
    max_bad_fraction: float,
    join: str | None = None,
    join_column: str = "synthetic_caption",
    rows_per_shard: int = 256,
    on_bad=None,
    on_progress=None,
) -> dict:
    """Like ``ingest("webdataset", ...)``, with one Ray task (1 CPU) per tar. Ray must be initialised.
    ``on_progress(rows, None)`` hears of the rows read (bad ones too) as each tar is done."""
    tars = tar_paths(src)
    joined = read_join(join, join_column) if join else None
    make_dirs(out)
    task = ray.remote(num_cpus=1, max_retries=0)(_ingest_tar).options(runtime_env={"env_vars": aws_env()})
    joined_ref = ray.put(joined)
    start = time.perf_counter()
    refs = [
        task.remote(i, os.path.abspath(t), out, max_pixels, max_bad_fraction, joined_ref, rows_per_shard)
        for i, t in enumerate(tars)
    ]
    try:
        results = _gather(refs, on_progress)
    except ray.exceptions.RayTaskError as err:
        for ref in refs:
            ray.cancel(ref)
        raise (err.cause if isinstance(err.cause, ValueError) else err) from None
    shards, bad, used_join = [], BadRows(), 0
    for entries, counts, errors, n_joined in results:
        shards += entries
        bad.merge(BadRows.from_dict(counts))
        used_join += n_joined
        for e in errors if on_bad else ():
            on_bad(e)
    bad.check(max_bad_fraction, final=True)
    manifest = write_manifest(out, shards, source=f"ingest:webdataset:{os.path.basename(src.rstrip('/'))}")
    seconds = time.perf_counter() - start
    return {
        "format": "webdataset",
        "rows": manifest["num_rows"],
        "shards": len(shards),
        "content_hash": manifest["content_hash"],
        "bad_rows": bad.to_dict(),
        "joined": used_join,
        "join_unused": len(joined) - used_join if joined else 0,
        "seconds": round(seconds, 3),
        "rows_per_s": round(bad.rows_seen / max(seconds, 1e-9), 1),
        "tasks": len(tars),
    }
