"""Ingestion of real datasets into Parquet shards, streaming: rows are written as they are read.

Sources (``FORMATS``):
- ``webdataset``: one tar, or a folder of tars, in the img2dataset layout (``KEY.jpg``, ``KEY.txt``,
  ``KEY.json``), read member by member with tarfile's streaming mode;
- ``csv`` / ``tsv`` / ``jsonl``: a table with an image path (relative to the table's folder) and a
  caption per row, read line by line;
- ``coco``: a COCO caption file (``captions_*.json``) plus its image folder. The annotation JSON is
  one document and is read whole (it holds text only); images are read one at a time. COCO has
  about five human captions per image; each image becomes one row whose ``web_caption`` is its
  first caption (lowest annotation id): TIPS pairs each image with one short caption, and joining
  five would make a long text unlike either of its caption kinds.

``--join FILE`` (CSV/TSV/JSONL with ``key`` and a caption column) brings a second caption made
elsewhere into ``synthetic_caption``; that file's captions are held in memory (keys and text only).
Every row is checked (rows.py): key, captions, the image header against ``max_pixels`` and a full
decode. An image path of a table or COCO file that leads outside the source folder (``../``, an
absolute path, a link out of it) is a bad row (``outside_source``) unless ``allow_outside``.
A bad row is skipped, named and counted; past ``max_bad_fraction`` the ingestion stops.
Keys are kept to reject duplicates. This module ingests in one streaming process; tars can also
be ingested by one Ray task each (parallel.py). A run stopped by the bad-row fraction
leaves no manifest (shard files it wrote are unlisted, and the next write there removes them).
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tipslab.jobs.data.enrichment.tags import caption_tags
from tipslab.jobs.data.shards.format import write_shards
from tipslab.jobs.data.shards.rows import BadRow, BadRows, check_caption, check_key, verify_image
from tipslab.models.errors import DataError

FORMATS = ("webdataset", "csv", "tsv", "jsonl", "coco")
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_DELIMITERS = {"csv": ",", "tsv": "\t"}


class IngestError(DataError):
    """The source as a whole cannot be read (missing file, missing column): nothing to skip."""


# --------------------------------------------------------------------------- sources
# Each reader yields raw samples {"key", "image": bytes | () -> bytes, "web_caption", ...} or a
# BadRow for a sample that is broken before any column can be checked.


def tar_paths(src: str) -> list[str]:
    if os.path.isdir(src):
        tars = sorted(str(p) for p in Path(src).iterdir() if p.name.endswith(".tar"))
        if not tars:
            raise IngestError(f"no .tar files in {src}")
        return tars
    if not os.path.isfile(src):
        raise IngestError(f"webdataset source not found: {src}")
    return [src]


def _webdataset_sample(key: str, parts: dict[str, bytes], tar: str):
    image_ext = next((e for e in _IMAGE_EXTS if e in parts), None)
    if image_ext is None:
        return BadRow(key, "missing_image", f"no {'/'.join(_IMAGE_EXTS)} member in {tar}")
    sample = {"key": key, "image": parts[image_ext], "web_caption": None}
    try:
        meta = json.loads(parts["json"]) if "json" in parts else {}
        if "txt" in parts:
            sample["web_caption"] = parts["txt"].decode("utf-8")
        elif isinstance(meta, dict):
            sample["web_caption"] = meta.get("caption")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return BadRow(key, "wrong_type", f"unreadable caption or json: {err}")
    return sample


def read_webdataset(src: str) -> Iterator:
    """Samples of img2dataset tars: members sharing a key (name up to its first dot) are grouped."""
    for path in tar_paths(src):
        try:
            with tarfile.open(path, mode="r|*") as tar:
                key, parts = None, {}
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, name = posixpath.split(member.name)
                    stem, _, ext = name.partition(".")
                    member_key = posixpath.join(folder, stem)
                    if member_key != key:
                        if parts:
                            yield _webdataset_sample(key, parts, path)
                        key, parts = member_key, {}
                    parts[ext.lower()] = tar.extractfile(member).read()
                if parts:
                    yield _webdataset_sample(key, parts, path)
        except tarfile.TarError as err:
            raise IngestError(f"{path} is not a readable tar: {err}") from None


def _image_loader(root: Path, value, key: str, allow_outside: bool = False) -> Callable[[], bytes]:
    """The image a row names, read when called. A path that leads outside `root` (`../`, an
    absolute path, a link out) is a bad row unless `allow_outside`: a table or caption file from
    elsewhere must not make the ingest copy, say, a private file into shards that others read."""
    if not isinstance(value, str) or not value.strip():
        raise BadRow(key, "wrong_type" if value is not None else "missing_image", f"image path is {value!r}")
    path = root / value
    if not allow_outside and not path.resolve().is_relative_to(root.resolve()):
        raise BadRow(key, "outside_source", f"{value} is outside the source folder {root} (--allow-outside reads it)")

    def load() -> bytes:
        try:
            return path.read_bytes()
        except OSError as err:
            raise BadRow(key, "missing_image", f"{path}: {err.strerror}") from None

    return load


def _table_rows(src: str, fmt: str) -> Iterator[tuple[str, object]]:
    """(where, record) for each line of a CSV/TSV/JSONL table; record is a dict or a BadRow."""
    if not os.path.isfile(src):
        raise IngestError(f"{fmt} table not found: {src}")
    try:
        with open(src, newline="", encoding="utf-8") as f:
            yield from _jsonl_rows(f, src) if fmt == "jsonl" else _csv_rows(f, src, fmt)
    except UnicodeDecodeError:  # decoded a block at a time: no line to name
        raise IngestError(f"{src}: not UTF-8 text (save the table as UTF-8)") from None


def _jsonl_rows(f, src: str) -> Iterator[tuple[str, object]]:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        where = f"{os.path.basename(src)}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            yield where, BadRow(where, "bad_json", str(err))
            continue
        except RecursionError:
            yield where, BadRow(where, "bad_json", "nested too deeply")
            continue
        yield (
            where,
            record
            if isinstance(record, dict)
            else BadRow(where, "wrong_type", f"line is a JSON {type(record).__name__}, expected an object"),
        )


def _csv_rows(f, src: str, fmt: str) -> Iterator[tuple[str, object]]:
    reader = csv.DictReader(f, delimiter=_DELIMITERS[fmt])
    try:
        for n, record in enumerate(reader, 2):
            where = f"{os.path.basename(src)}:{n}"
            if None in record or None in record.values():  # more or fewer fields than the header
                yield where, BadRow(where, "wrong_columns", f"{len(reader.fieldnames)} columns in the header")
                continue
            yield where, record
    except csv.Error as err:  # the file, not a row: a cell past csv's size limit, a stray quote
        raise IngestError(f"{src}: line {reader.line_num}: not a readable {fmt} table ({err})") from None


def read_table(
    src: str,
    fmt: str,
    image_column: str = "image",
    caption_column: str = "caption",
    key_column: str = "key",
    allow_outside: bool = False,
) -> Iterator:
    """Samples of a table of image paths; a row without a key is keyed by its image path."""
    root = Path(src).resolve().parent
    for where, record in _table_rows(src, fmt):
        if isinstance(record, BadRow):
            yield record
            continue
        if fmt != "jsonl":
            for column, flag in ((image_column, "--image-column"), (caption_column, "--caption-column")):
                if column not in record:
                    raise IngestError(
                        f"{src} has no column {column!r} (columns: {sorted(record)}); name it with {flag}"
                    )
        try:
            raw_key = record.get(key_column)
            if raw_key in (None, ""):
                path = record.get(image_column)
                raw_key = os.path.splitext(path)[0] if isinstance(path, str) else raw_key
            key = check_key(raw_key, where)
            yield {
                "key": key,
                "image": _image_loader(root, record.get(image_column), key, allow_outside),
                "web_caption": record.get(caption_column),
                "synthetic_caption": record.get("synthetic_caption"),
            }
        except BadRow as err:
            yield err


def read_coco(
    src: str, images: str | None = None, allow_outside: bool = False, on_total: Callable[[int], None] | None = None
) -> Iterator:
    """One sample per image of a COCO caption file, captioned by its first caption; `on_total`
    hears how many images the file lists once it is read."""
    try:
        with open(src, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IngestError(f"cannot read COCO caption file {src}: {err}") from None
    except RecursionError:
        raise IngestError(f"cannot read COCO caption file {src}: nested too deeply") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("images"), list)
        or not isinstance(doc.get("annotations"), list)
    ):
        raise IngestError(f"{src} is not a COCO caption file (needs 'images' and 'annotations' lists)")
    first: dict = {}
    for i, ann in enumerate(doc["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise IngestError(f"{src}: annotations[{i}]: image_id {image_id!r:.80} is not an integer or text")
    for ann in sorted(
        (a for a in doc["annotations"] if isinstance(a, dict)),
        key=lambda a: a.get("id") if isinstance(a.get("id"), int) else 0,
    ):
        first.setdefault(ann["image_id"], ann.get("caption"))
    root = Path(images) if images else Path(src).resolve().parent
    if on_total:
        on_total(len(doc["images"]))
    for i, img in enumerate(doc["images"]):
        where = f"{os.path.basename(src)} images[{i}]"
        try:
            if not isinstance(img, dict):
                raise BadRow(where, "wrong_type", "image entry is not an object")
            key = check_key(img.get("id"), where)
            yield {
                "key": key,
                "image": _image_loader(root, img.get("file_name"), key, allow_outside),
                "web_caption": first.get(img["id"], ""),
            }
        except BadRow as err:
            yield err


def read_join(path: str, column: str = "synthetic_caption") -> dict:
    """key -> caption from a CSV/TSV/JSONL file (format from its extension); blank captions are
    left out, so that those rows keep no synthetic caption rather than becoming bad rows."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    fmt = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "json": "jsonl"}.get(ext)
    if fmt is None:
        raise IngestError(f"--join {path}: expected a .csv, .tsv or .jsonl file")
    joined = {}
    for where, record in _table_rows(path, fmt):
        if isinstance(record, BadRow):
            raise IngestError(f"--join {path}: {record}")
        if "key" not in record or column not in record:
            raise IngestError(f"--join {path} line {where} needs columns 'key' and {column!r}")
        if not (isinstance(record[column], str) and not record[column].strip()):
            joined[str(record["key"]).strip()] = record[column]  # a blank cell joins nothing
    return joined


def read_source(fmt: str, src: str, **options) -> Iterator:
    if fmt == "webdataset":
        return read_webdataset(src)
    if fmt in ("csv", "tsv", "jsonl"):
        table_options = ("image_column", "caption_column", "key_column", "allow_outside")
        return read_table(src, fmt, **{k: v for k, v in options.items() if k in table_options})
    if fmt == "coco":
        return read_coco(src, options.get("images"), options.get("allow_outside", False), options.get("on_total"))
    raise IngestError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- rows


def make_row(sample: dict, max_pixels: int, joined: dict | None = None) -> dict:
    """A shard row from a raw sample, or BadRow. Captions are checked before the image is read."""
    key = sample["key"]
    web = check_caption(sample.get("web_caption"), key, "web_caption")
    synthetic = sample.get("synthetic_caption")
    if joined is not None and key in joined:
        synthetic = joined[key]
    synthetic = check_caption(synthetic, key, "synthetic_caption")
    if web is None and synthetic is None:
        raise BadRow(key, "empty_caption", "no caption in any column")
    image = sample["image"]() if callable(sample["image"]) else sample["image"]
    width, height = verify_image(image, key, max_pixels)
    return {
        "key": key,
        "image": bytes(image),
        "web_caption": web,
        "synthetic_caption": synthetic,
        "tags": caption_tags(web, synthetic),
        "width": width,
        "height": height,
    }


def checked_rows(
    samples,
    bad: BadRows,
    keys: set[str],
    max_pixels: int,
    max_bad_fraction: float,
    joined: dict | None,
    on_bad: Callable[[BadRow], None] | None = None,
) -> Iterator[dict]:
    """Shard rows made from `samples`; a bad sample (a `BadRow` from the reader, a repeated key, or
    one `make_row` refuses) is counted in `bad`, handed to `on_bad` and skipped. Stops the job past
    `max_bad_fraction` (TooManyBadRows)."""
    for sample in samples:
        bad.seen()
        try:
            if isinstance(sample, BadRow):
                raise sample
            if sample["key"] in keys:
                raise BadRow(sample["key"], "duplicate_key")
            row = make_row(sample, max_pixels, joined)
        except BadRow as err:
            bad.add(err)
            if on_bad:
                on_bad(err)
            bad.check(max_bad_fraction)
            continue
        keys.add(row["key"])
        yield row


def ingest(
    fmt: str,
    src: str,
    out: str,
    *,
    max_pixels: int,
    max_bad_fraction: float,
    join: str | None = None,
    join_column: str = "synthetic_caption",
    rows_per_shard: int = 256,
    on_bad: Callable[[BadRow], None] | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    **options,
) -> dict:
    """Read ``src`` in format ``fmt`` into shards at ``out``; return a summary.

    ``on_progress(done, total)`` hears of every source row read (bad ones too); ``total`` is the
    source's row count where it is known before the end (COCO's image list), else None.

    The summary holds the manifest's row count, shard count and content hash, the bad-row counts
    (``BadRows.to_dict``), how many rows took a joined caption, and the rows per second.
    Raises ``TooManyBadRows`` past ``max_bad_fraction``, ``IngestError`` for an unreadable source.
    """
    joined = read_join(join, join_column) if join else None
    bad = BadRows()
    keys: set[str] = set()
    used_join, total = 0, None

    def counted(samples: Iterator) -> Iterator:
        for done, sample in enumerate(samples, 1):
            yield sample
            on_progress(done, total)  # once the sample is checked, as the next is asked for

    def set_total(n: int) -> None:
        nonlocal total
        total = n

    def rows() -> Iterator[dict]:
        nonlocal used_join
        samples = read_source(fmt, src, **options, **({"on_total": set_total} if fmt == "coco" else {}))
        for row in checked_rows(
            counted(samples) if on_progress else samples, bad, keys, max_pixels, max_bad_fraction, joined, on_bad
        ):
            used_join += joined is not None and row["key"] in joined
            yield row
        bad.check(max_bad_fraction, final=True)

    start = time.perf_counter()
    manifest = write_shards(
        rows(), out, source=f"ingest:{fmt}:{os.path.basename(src.rstrip('/'))}", rows_per_shard=rows_per_shard
    )
    seconds = time.perf_counter() - start
    return {
        "format": fmt,
        "rows": manifest["num_rows"],
        "shards": len(manifest["shards"]),
        "content_hash": manifest["content_hash"],
        "bad_rows": bad.to_dict(),
        "joined": used_join,
        "join_unused": len(joined) - used_join if joined else 0,
        "seconds": round(seconds, 3),
        "rows_per_s": round(bad.rows_seen / max(seconds, 1e-9), 1),
    }
