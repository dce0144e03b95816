"""Parquet shards (one row per image) plus a ``manifest.json`` describing them.

Layout of a dataset folder::

    out_dir/shard-00000.parquet
    out_dir/shard-00001.parquet
    out_dir/manifest.json   {"schema_version", "source", "num_rows",
                             "shards": [{"file", "num_rows", "sha256"}], "content_hash"}

``content_hash`` is the sha256 of the shards' sha256 hex digests concatenated in order, so it
changes whenever any shard's bytes (or the shard order) change. Every file is written under a
temporary name and moved into place with ``os.replace``, so readers never see half a file.
Only local paths are supported for now.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

_BASE_FIELDS = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),  # encoded PNG
    pa.field("web_caption", pa.string(), nullable=True),
    pa.field("synthetic_caption", pa.string(), nullable=True),
    pa.field("tags", pa.list_(pa.string()), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
]
_EVAL_FIELDS = [
    pa.field("label", pa.int32(), nullable=True),
    pa.field("segmentation", pa.binary(), nullable=True),  # PNG, uint8 class ids
    pa.field("depth", pa.binary(), nullable=True),  # 16-bit PNG, millimetres
]
BASE_COLUMNS = tuple(f.name for f in _BASE_FIELDS)
EVAL_COLUMNS = tuple(f.name for f in _EVAL_FIELDS)
_METADATA = {b"tipslab.schema_version": str(SCHEMA_VERSION).encode()}

#: The full schema. Shards may omit any of the eval columns (``EVAL_COLUMNS``).
SHARD_SCHEMA = pa.schema(_BASE_FIELDS + _EVAL_FIELDS, metadata=_METADATA)

_SHARD_RE = re.compile(r"^shard-\d{5,}\.parquet$")


class ShardError(ValueError):
    """A dataset folder, manifest or row is missing or malformed."""


def shard_schema(eval_columns: Iterable[str] = ()) -> pa.Schema:
    """The base schema plus the named eval columns (in canonical order)."""
    wanted = set(eval_columns)
    unknown = wanted - set(EVAL_COLUMNS)
    if unknown:
        raise ShardError(f"unknown eval columns {sorted(unknown)}; known: {list(EVAL_COLUMNS)}")
    fields = _BASE_FIELDS + [f for f in _EVAL_FIELDS if f.name in wanted]
    return pa.schema(fields, metadata=_METADATA)


# --------------------------------------------------------------------------- PNG helpers


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) / (H, W, 3) / (H, W, 4) array or a uint16 (H, W) array."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    if arr.dtype == np.uint16:
        if arr.ndim != 2:
            raise ValueError(f"16-bit PNGs must be single-channel, got shape {arr.shape}")
        img = Image.new("I;16", (arr.shape[1], arr.shape[0]))
        img.frombytes(arr.astype("<u2", copy=False).tobytes(), "raw", "I;16")
    elif arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        img = Image.fromarray(arr)
    else:
        raise ValueError(f"cannot encode array of dtype {arr.dtype} and shape {arr.shape} as PNG")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG (or any Pillow-readable) bytes; 16-bit greyscale comes back as uint16."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode.startswith("I;16"):
            return np.asarray(img).astype(np.uint16)
        if img.mode == "I":  # older Pillow opens 16-bit greyscale PNGs as 32-bit ints
            return np.asarray(img).astype(np.uint16)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return np.asarray(img).copy()


# --------------------------------------------------------------------------- writing


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _check_row(row: dict, index: int, columns: set[str]) -> dict:
    if not isinstance(row, dict):
        raise ShardError(f"row {index} is a {type(row).__name__}, expected a dict")
    extra = set(row) - columns
    if extra:
        raise ShardError(
            f"row {index} ({row.get('key')!r}) has columns {sorted(extra)} outside this dataset's "
            f"schema (eval columns are fixed by the first row; unknown names are rejected)"
        )
    for name in ("key", "image", "width", "height"):
        if row.get(name) is None:
            raise ShardError(f"row {index} ({row.get('key')!r}) lacks required column {name!r}")
    if row.get("tags") is None:
        row = {**row, "tags": []}
    return row


def _write_shard(rows: list[dict], schema: pa.Schema, path: Path) -> dict:
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = _tmp_name(path)
    try:
        pq.write_table(table, tmp, row_group_size=max(len(rows), 1), compression="zstd")
        digest = _sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"file": path.name, "num_rows": len(rows), "sha256": digest}


def content_hash(shard_digests: Iterable[str]) -> str:
    h = hashlib.sha256()
    for digest in shard_digests:
        h.update(digest.encode("ascii"))
    return h.hexdigest()


def write_shards(
    rows: Iterable[dict], out_dir: str, *, source: str, rows_per_shard: int = 256
) -> dict:
    """Write ``rows`` as Parquet shards plus ``manifest.json`` into ``out_dir``; return the manifest.

    Which eval columns (label, segmentation, depth) the dataset has is decided by the first row;
    later rows may leave them out (stored as null) but may not add new ones. Shard files from an
    earlier write into the same folder that the new manifest does not list are removed.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema: pa.Schema | None = None
    columns: set[str] = set()
    shards: list[dict] = []
    batch: list[dict] = []
    total = 0

    def flush() -> None:
        nonlocal batch
        if batch:
            assert schema is not None
            shards.append(_write_shard(batch, schema, out / f"shard-{len(shards):05d}.parquet"))
            batch = []

    for i, row in enumerate(rows):
        if schema is None:
            if not isinstance(row, dict):
                raise ShardError(f"row 0 is a {type(row).__name__}, expected a dict")
            schema = shard_schema(c for c in EVAL_COLUMNS if c in row)
            columns = set(schema.names)
        batch.append(_check_row(row, i, columns))
        total += 1
        if len(batch) >= rows_per_shard:
            flush()
    flush()

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "num_rows": total,
        "shards": shards,
        "content_hash": content_hash(s["sha256"] for s in shards),
    }
    path = out / MANIFEST_NAME
    tmp = _tmp_name(path)
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)

    listed = {s["file"] for s in shards}
    for stale in out.iterdir():
        if _SHARD_RE.match(stale.name) and stale.name not in listed:
            stale.unlink()
    return manifest


# --------------------------------------------------------------------------- reading


def _manifest_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


def read_manifest(path: str | os.PathLike) -> dict:
    """Load and validate a manifest, given its path or the dataset folder holding it."""
    mpath = _manifest_path(path)
    if not mpath.is_file():
        raise ShardError(f"shard manifest not found: {mpath}")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"shard manifest {mpath} is not valid JSON: {e}") from e

    def bad(why: str) -> ShardError:
        return ShardError(f"shard manifest {mpath} is malformed: {why}")

    if not isinstance(manifest, dict):
        raise bad("top level is not an object")
    missing = [k for k in ("schema_version", "source", "num_rows", "shards", "content_hash")
               if k not in manifest]
    if missing:
        raise bad(f"missing keys {missing}")
    version = manifest["schema_version"]
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise bad(f"schema_version {version!r} is not supported (this code reads <= {SCHEMA_VERSION})")
    shards = manifest["shards"]
    if not isinstance(shards, list):
        raise bad("'shards' is not a list")
    for i, s in enumerate(shards):
        if not (isinstance(s, dict) and isinstance(s.get("file"), str)
                and isinstance(s.get("num_rows"), int) and isinstance(s.get("sha256"), str)):
            raise bad(f"shard entry {i} needs 'file' (str), 'num_rows' (int) and 'sha256' (str)")
        if Path(s["file"]).is_absolute() or ".." in Path(s["file"]).parts:
            raise bad(f"shard entry {i} file {s['file']!r} must be relative to the manifest folder")
    counted = sum(s["num_rows"] for s in shards)
    if manifest["num_rows"] != counted:
        raise bad(f"num_rows is {manifest['num_rows']!r} but the shards hold {counted}")
    if manifest["content_hash"] != content_hash(s["sha256"] for s in shards):
        raise bad("content_hash does not match the shards' sha256 values")
    return manifest


def shard_files(path: str | os.PathLike) -> list[str]:
    """Absolute paths of the manifest's shards, in manifest order; each must exist."""
    mpath = _manifest_path(path)
    manifest = read_manifest(mpath)
    root = mpath.resolve().parent
    files = []
    for s in manifest["shards"]:
        f = root / s["file"]
        if not f.is_file():
            raise ShardError(f"shard {f} listed in {mpath} does not exist")
        files.append(str(f))
    return files


def verify_shards(path: str | os.PathLike) -> dict[str, Any]:
    """Re-hash every shard and compare with the manifest; return the manifest if all match."""
    mpath = _manifest_path(path)
    manifest = read_manifest(mpath)
    for s, f in zip(manifest["shards"], shard_files(mpath)):
        if _sha256_file(Path(f)) != s["sha256"]:
            raise ShardError(f"shard {f} does not match the sha256 recorded in {mpath}")
    return manifest
