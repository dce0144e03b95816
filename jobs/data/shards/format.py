"""Parquet shards (one row per image) plus a ``manifest.json`` describing them.

Layout of a dataset folder::

    out_dir/shard-00000.parquet
    out_dir/shard-00001.parquet
    out_dir/manifest.json   {"schema_version", "source", "num_rows",
                             "shards": [{"file", "num_rows", "sha256"}], "content_hash"}

``content_hash`` is the sha256 of the shards' sha256 hex digests concatenated in order, so it
changes whenever any shard's bytes (or the shard order) change. ``out_dir`` is a local folder or an
``s3://bucket/prefix`` (see storage.py). Locally every file is written under a temporary name and
moved into place with ``os.replace``; on S3 an object appears only when complete. Either way
readers never see half a file, and the manifest is written last.

Schema versions: 1 had the eval columns label, segmentation and depth; 2 adds instances and
normals. Readers accept both.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tipslab.jobs import storage
from tipslab.models.errors import ConfigError, DataError

SCHEMA_VERSION = 2
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
    pa.field("depth", pa.binary(), nullable=True),  # 16-bit PNG, millimetres (0: no surface)
    pa.field("instances", pa.binary(), nullable=True),  # PNG, uint8: 0 background, k object k
    pa.field("normals", pa.binary(), nullable=True),  # PNG RGB uint8 of (n + 1) / 2 * 255; black: none
]
BASE_COLUMNS = tuple(f.name for f in _BASE_FIELDS)
EVAL_COLUMNS = tuple(f.name for f in _EVAL_FIELDS)
_METADATA = {b"tipslab.schema_version": str(SCHEMA_VERSION).encode()}

#: The full schema. Shards may omit any of the eval columns (``EVAL_COLUMNS``).
SHARD_SCHEMA = pa.schema(_BASE_FIELDS + _EVAL_FIELDS, metadata=_METADATA)

_SHARD_RE = re.compile(r"^shard-\d{5,}\.parquet$")


class ShardError(DataError):
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


def encode_normals(normals: np.ndarray) -> bytes:
    """PNG of unit normals (H, W, 3) as RGB uint8 round((n + 1) / 2 * 255).

    Pixels without a surface (sky) hold the zero vector and are stored black, (0, 0, 0), which no
    unit normal encodes to (its components would all be -1).
    """
    n = np.asarray(normals, np.float32)
    if n.ndim != 3 or n.shape[2] != 3:
        raise ValueError(f"normals must have shape (H, W, 3), got {n.shape}")
    rgb = np.clip(np.rint((n + 1.0) * 127.5), 0, 255).astype(np.uint8)
    rgb[np.linalg.norm(n, axis=2) < 0.5] = 0
    return encode_png(rgb)


def decode_normals(data: bytes) -> np.ndarray:
    """float32 (H, W, 3) from `encode_normals` bytes: within 1/255 per component of the unit
    normal, and exactly zero where there was no surface (black)."""
    rgb = decode_png(data)[..., :3]
    n = rgb.astype(np.float32) / 127.5 - 1.0
    return np.where(rgb.any(axis=2, keepdims=True), n, 0.0).astype(np.float32)


# --------------------------------------------------------------------------- writing


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def schema_for(row: Any) -> pa.Schema:
    """The schema a dataset gets from its first row: the base columns plus its eval columns."""
    if not isinstance(row, dict):
        raise ShardError(f"row 0 is a {type(row).__name__}, expected a dict")
    return shard_schema(c for c in EVAL_COLUMNS if c in row)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def write_shard(
    rows: list[dict], out_dir: str, index: int, schema: pa.Schema | None = None, first_row: int = 0
) -> dict:
    """Write one shard file; returns its manifest entry. Independent shards can be written by
    parallel tasks and listed afterwards with `write_manifest`."""
    schema = schema if schema is not None else schema_for(rows[0] if rows else {})
    columns = set(schema.names)
    rows = [_check_row(r, first_row + i, columns) for i, r in enumerate(rows)]
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, row_group_size=max(len(rows), 1), compression="zstd")
    data = buf.getvalue().to_pybytes()
    storage.write_bytes(storage.join(out_dir, shard_name(index)), data)
    return {"file": shard_name(index), "num_rows": len(rows), "sha256": _sha256(data)}


def content_hash(shard_digests: Iterable[str]) -> str:
    h = hashlib.sha256()
    for digest in shard_digests:
        h.update(digest.encode("ascii"))
    return h.hexdigest()


def write_manifest(out_dir: str, shards: list[dict], *, source: str) -> dict:
    """Write ``manifest.json`` for shards already in ``out_dir``, then remove shard files from an
    earlier write into the same folder that this manifest does not list."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "num_rows": sum(s["num_rows"] for s in shards),
        "shards": shards,
        "content_hash": content_hash(s["sha256"] for s in shards),
    }
    storage.write_bytes(storage.join(out_dir, MANIFEST_NAME), (json.dumps(manifest, indent=2) + "\n").encode())
    listed = {s["file"] for s in shards}
    for name in storage.list_names(out_dir):
        if _SHARD_RE.match(name) and name not in listed:
            storage.delete(storage.join(out_dir, name))
    return manifest


def write_shards(rows: Iterable[dict], out_dir: str, *, source: str, rows_per_shard: int = 256) -> dict:
    """Write ``rows`` as Parquet shards plus ``manifest.json`` into ``out_dir`` (a local folder or
    ``s3://bucket/prefix``); return the manifest.

    Which eval columns the dataset has is decided by the first row; later rows may leave them out
    (stored as null) but may not add new ones.
    """
    if rows_per_shard < 1:
        raise ConfigError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    storage.make_dirs(out_dir)
    schema: pa.Schema | None = None
    shards: list[dict] = []
    batch: list[dict] = []
    total = 0
    for row in rows:
        if schema is None:
            schema = schema_for(row)
        batch.append(row)
        total += 1
        if len(batch) >= rows_per_shard:
            shards.append(write_shard(batch, out_dir, len(shards), schema, total - len(batch)))
            batch = []
    if batch:
        shards.append(write_shard(batch, out_dir, len(shards), schema, total - len(batch)))
    return write_manifest(out_dir, shards, source=source)


# --------------------------------------------------------------------------- reading


def _manifest_path(path: str | os.PathLike) -> str:
    p = str(path)
    if storage.is_s3(p):
        return p if p.endswith(".json") else storage.join(p, MANIFEST_NAME)
    return os.path.join(p, MANIFEST_NAME) if os.path.isdir(p) else p


def _folder(mpath: str) -> str:
    if storage.is_s3(mpath):
        return posixpath.dirname(mpath)
    return os.path.dirname(os.path.abspath(mpath))


def read_manifest(path: str | os.PathLike) -> dict:
    """Load and validate a manifest, given its path or the dataset folder holding it."""
    mpath = _manifest_path(path)
    try:
        raw = storage.read_bytes(mpath)
    except FileNotFoundError:
        raise ShardError(f"shard manifest not found: {mpath}") from None
    except OSError as e:
        raise ShardError(f"cannot read shard manifest {mpath}: {e}{storage.refused_hint(e, mpath)}") from None
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"shard manifest {mpath} is not valid JSON: {e}") from e
    except RecursionError:
        raise ShardError(f"shard manifest {mpath} is not a manifest: nested too deeply") from None

    def bad(why: str) -> ShardError:
        return ShardError(f"shard manifest {mpath} is malformed: {why}")

    if not isinstance(manifest, dict):
        raise bad("top level is not an object")
    missing = [k for k in ("schema_version", "source", "num_rows", "shards", "content_hash") if k not in manifest]
    if missing:
        raise bad(f"missing keys {missing}")
    version = manifest["schema_version"]
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise bad(f"schema_version {version!r} is not supported (this code reads <= {SCHEMA_VERSION})")
    shards = manifest["shards"]
    if not isinstance(shards, list):
        raise bad("'shards' is not a list")
    for i, s in enumerate(shards):
        if not (
            isinstance(s, dict)
            and isinstance(s.get("file"), str)
            and isinstance(s.get("num_rows"), int)
            and isinstance(s.get("sha256"), str)
        ):
            raise bad(f"shard entry {i} needs 'file' (str), 'num_rows' (int) and 'sha256' (str)")
        if s["file"] in ("", ".", "..") or "/" in s["file"] or "\\" in s["file"]:
            raise bad(f"shard entry {i} file {s['file']!r} must be a file name in the manifest's folder")
    counted = sum(s["num_rows"] for s in shards)
    if manifest["num_rows"] != counted:
        raise bad(f"num_rows is {manifest['num_rows']!r} but the shards hold {counted}")
    if manifest["content_hash"] != content_hash(s["sha256"] for s in shards):
        raise bad("content_hash does not match the shards' sha256 values")
    return manifest


def shard_files(path: str | os.PathLike) -> list[str]:
    """The manifest's shards in manifest order, each of which must exist: absolute local paths,
    or `s3://bucket/key` URIs (what Ray Data's `read_parquet` and pyarrow accept)."""
    mpath = _manifest_path(path)
    manifest = read_manifest(mpath)
    root = storage.absolute(_folder(mpath))
    files = []
    for s in manifest["shards"]:
        f = storage.join(root, s["file"])
        if not storage.is_file(f):
            raise ShardError(f"shard {f} listed in {mpath} does not exist")
        files.append(f)
    return files


def verify_shards(path: str | os.PathLike) -> dict[str, Any]:
    """Re-hash every shard and compare with the manifest; return the manifest if all match."""
    mpath = _manifest_path(path)
    manifest = read_manifest(mpath)
    for s, f in zip(manifest["shards"], shard_files(mpath)):
        if _sha256(storage.read_bytes(f)) != s["sha256"]:
            raise ShardError(f"shard {f} does not match the sha256 recorded in {mpath}")
    return manifest
