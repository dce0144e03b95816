"""Reading a shard set row by row, and writing a changed copy of it (tags, captions).

A rewrite goes to a new shard set: into ``out`` when given, else next to the source
(``SRC.rewrite-PID``), which then takes the source's place: the old folder is renamed aside, the
new one renamed in, the old one removed. Readers see the old set or the new one, each with its own
manifest, and a rewrite that fails half-way leaves the source untouched. In-place rewriting needs a
local folder; for ``s3://`` give ``out``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tipslab.jobs.data.shards.format import MANIFEST_NAME, ShardError, read_manifest, shard_files, write_shards
from tipslab.jobs.storage import is_s3, resolve
from tipslab.models.errors import DataError

_SHARD_PREFIX = "shard-"


def iter_rows(
    shards: str, columns: list[str] | None = None, batch_size: int = 64, required: tuple[str, ...] = ()
) -> Iterator[dict]:
    """The rows of a shard set as dicts, one record batch in memory at a time. A file that is not
    Parquet, or a shard without one of the `required` columns, is a ShardError naming the file."""
    for uri in shard_files(shards):
        fs, path = resolve(uri)
        try:
            with fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f)
                missing = [c for c in required if c not in parquet.schema_arrow.names]
                if missing:
                    raise ShardError(
                        f"shard {uri} has no column {', '.join(map(repr, missing))} "
                        f"(its columns: {', '.join(parquet.schema_arrow.names)})"
                    )
                for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                    yield from batch.to_pylist()
        except pa.ArrowException as err:  # not Parquet, or a part of it unreadable
            raise ShardError(f"shard {uri} is not a readable Parquet file ({str(err).splitlines()[0][:200]})") from None


def rewrite_shards(
    src: str, rows: Iterator[dict], *, source: str, out: str | None = None, rows_per_shard: int | None = None
) -> dict:
    """Write ``rows`` (made from ``src``) as a new shard set at ``out``, or in place of ``src``."""
    per_shard = rows_per_shard or max((s["num_rows"] for s in read_manifest(src)["shards"]), default=256)
    if out and out.rstrip("/") != src.rstrip("/"):
        return write_shards(rows, out, source=source, rows_per_shard=per_shard)
    if is_s3(src):
        raise DataError(f"cannot rewrite {src} in place; give an output location")
    old = Path(src)
    tmp = old.with_name(f"{old.name}.rewrite-{os.getpid()}")
    aside = old.with_name(f"{old.name}.old-{os.getpid()}")
    try:
        manifest = write_shards(rows, str(tmp), source=source, rows_per_shard=per_shard)
        for extra in old.iterdir():  # files kept next to the shards (a tag vocabulary, notes)
            if extra.is_file() and extra.name != MANIFEST_NAME and not extra.name.startswith(_SHARD_PREFIX):
                shutil.copy2(extra, tmp / extra.name)
        os.rename(old, aside)
        os.rename(tmp, old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)
    return manifest
