"""``tipslab data check``: what is in a shard set, and what is broken, in one streaming pass.

Every image is decoded (a truncated file shows only then), its header checked against the pixel
bound, and its size compared with the row's ``width``/``height``. Caption lengths are in words.
A shard set without a column that training reads is reported (``training``, and a warning line in
the text) rather than refused: probe and evaluation splits need fewer columns. The report's keys
are stable (``tipslab data check --json`` is for scripts); distributions are
``{"min", "median", "p95", "max"}``, with nulls when there is nothing to measure.
"""

from __future__ import annotations

import numpy as np

from tipslab.jobs.data.enrichment.tags import VOCAB_NAME
from tipslab.jobs.data.pipeline.columns import CAPTION_COLUMNS, TRAIN_COLUMNS, schema_names, unfit
from tipslab.jobs.data.shards.format import read_manifest, shard_files
from tipslab.jobs.data.shards.rewrite import iter_rows
from tipslab.jobs.data.shards.rows import KEPT_KEYS, BadRow, BadRows, verify_image
from tipslab.jobs.storage import exists, join, read_bytes

REQUIRED_COLUMNS = ("key", "image", "width", "height")  # what every row of a shard set has (format.py)


def distribution(values: list[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "p95": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "min": float(a.min()),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
    }


class Tally:
    """What one pass over the rows counts: keys, images, captions, tags."""

    def __init__(self, max_pixels: int):
        self.max_pixels, self.rows, self.bad = max_pixels, 0, BadRows()
        self.seen: set[str] = set()
        self.duplicates: list[str] = []
        self.n_duplicates = 0
        self.missing = dict.fromkeys(CAPTION_COLUMNS, 0)
        self.missing_all = 0
        self.words: dict[str, list[int]] = {c: [] for c in CAPTION_COLUMNS}
        self.widths, self.heights = [], []
        self.tagged, self.tag_count, self.distinct_tags = 0, 0, set()

    def add(self, row: dict) -> None:
        self.rows += 1
        key = row["key"]
        if not isinstance(key, str) or not key.strip():  # a NULL, empty or non-text key: named by position
            key = f"row {self.rows - 1}"
            self.bad.add(
                BadRow(key, "missing_key" if row["key"] in (None, "") else "wrong_type", f"key {row['key']!r}")
            )
        elif key in self.seen:
            self.n_duplicates += 1
            if len(self.duplicates) < KEPT_KEYS:
                self.duplicates.append(key)
        self.seen.add(key)
        self.bad.seen()
        try:
            width, height = verify_image(row["image"], key, self.max_pixels)
            if (width, height) != (row["width"], row["height"]):
                raise BadRow(key, "wrong_size", f"image is {width}x{height}, row says {row['width']}x{row['height']}")
            self.widths.append(width)
            self.heights.append(height)
        except BadRow as err:
            self.bad.add(err)
        present = 0
        for column in CAPTION_COLUMNS:
            text = row.get(column)
            if not isinstance(text, str) or not text.strip():
                self.missing[column] += 1
            else:
                present += 1
                self.words[column].append(len(text.split()))
        self.missing_all += present == 0
        tags = row.get("tags") if isinstance(row.get("tags"), list) else []
        self.tagged += bool(tags)
        self.tag_count += len(tags)
        self.distinct_tags.update(tags)


def check_shards(shards: str, *, max_pixels: int) -> dict:
    """The report of ``tipslab data check`` for the shard set at ``shards``."""
    manifest = read_manifest(shards)
    t = Tally(max_pixels)
    for row in iter_rows(shards, required=REQUIRED_COLUMNS):
        t.add(row)
    vocab_path = join(shards, VOCAB_NAME)
    vocab_size = None
    if exists(vocab_path):
        vocab_size = sum(1 for line in read_bytes(vocab_path).decode().splitlines() if line.strip())
    report, rows = t.bad.to_dict(), t.rows
    files = shard_files(shards)
    schemas = [set(schema_names(f)) for f in files]
    captions = [c for c in CAPTION_COLUMNS if schemas and all(c in names for names in schemas)]
    problem = unfit(files, TRAIN_COLUMNS, "training reads")
    return {
        "shards": shards,
        "rows": rows,
        "shard_files": len(files),
        "content_hash": manifest["content_hash"],
        "bad_images": {
            "count": report["bad"],
            "by_reason": report["counts"],
            "keys": report["keys"],
            "examples": report["examples"],
        },
        "duplicate_keys": {"count": t.n_duplicates, "keys": t.duplicates},
        "missing_captions": {**t.missing, "all": t.missing_all},
        "image_width": distribution(t.widths),
        "image_height": distribution(t.heights),
        "caption_words": {c: distribution(t.words[c]) for c in CAPTION_COLUMNS},
        "tags": {
            "rows_with_tags": round(t.tagged / rows, 4) if rows else 0.0,
            "mean_per_row": round(t.tag_count / rows, 3) if rows else 0.0,
            "distinct": len(t.distinct_tags),
            "vocab_file": vocab_path if vocab_size is not None else None,
            "vocab_size": vocab_size,
        },
        # A column absent from a shard stops a training run (jobs/data/pipeline/columns.py); NULLs do not.
        "training": {"fit": problem is None, "caption_columns": captions, "problem": problem},
    }


def format_report(report: dict) -> str:
    """The report for people: one line per part."""

    def dist(d: dict) -> str:
        if d["min"] is None:
            return "none"
        return f"min {d['min']:g}, median {d['median']:g}, p95 {d['p95']:g}, max {d['max']:g}"

    bad, tags = report["bad_images"], report["tags"]
    lines = [
        f"{report['shards']}: {report['rows']} rows in {report['shard_files']} shards "
        f"(content hash {report['content_hash'][:12]})",
        f"bad images: {bad['count']}"
        + (f" {bad['by_reason']}: {'; '.join(bad['examples'][:5])}" if bad["count"] else ""),
        f"duplicate keys: {report['duplicate_keys']['count']}"
        + (f" ({', '.join(report['duplicate_keys']['keys'][:5])})" if report["duplicate_keys"]["count"] else ""),
        "missing captions: " + ", ".join(f"{k} {v}" for k, v in report["missing_captions"].items()),
        f"image width: {dist(report['image_width'])}",
        f"image height: {dist(report['image_height'])}",
        *(f"{c} words: {dist(d)}" for c, d in report["caption_words"].items()),
        f"tags: {tags['rows_with_tags']:.1%} of rows tagged, {tags['mean_per_row']} per row, "
        f"{tags['distinct']} distinct; vocabulary "
        + (f"{tags['vocab_size']} tags in {tags['vocab_file']}" if tags["vocab_file"] else "file: none"),
        "caption columns: " + (", ".join(report["training"]["caption_columns"]) or "none"),
    ]
    if not report["training"]["fit"]:
        lines.append(f"warning: not fit for training: {report['training']['problem']}")
    return "\n".join(lines)
