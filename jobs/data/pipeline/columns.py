"""The shard columns that a run reads, and a check of a shard set's files for them.

Training reads TRAIN_COLUMNS (and `tags` when `data.tag_vocab` is set) in every caption mode: the
views tokenize both captions of every row, and a row's NULL caption is an empty text, so a caption
that the loss does not use may be a column of NULLs but not an absent column (Ray Data's reader
then fails minutes into the run, with a KeyError). The probes read `key` and `image`; their labels
and captions are read where present (jobs/eval/evalsets/scenes.py).

Importing this module loads no pyarrow: `tipslab` checks a run's configs before loading anything
heavy, and loads pyarrow only to read the schema of shards that exist.
"""

from __future__ import annotations

CAPTION_COLUMNS = ("web_caption", "synthetic_caption")
TRAIN_COLUMNS = ("key", "image", *CAPTION_COLUMNS)
PROBE_COLUMNS = ("key", "image")


def train_columns(tag_vocab: str | None) -> list[str]:
    """The columns the training pipeline reads, for a run with this `data.tag_vocab`."""
    return [*TRAIN_COLUMNS, *(["tags"] if tag_vocab else [])]


def schema_names(uri: str) -> list[str]:
    """The column names of one shard file, from its footer (no row is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tipslab.jobs.data.shards.format import ShardError
    from tipslab.jobs.storage import resolve

    fs, path = resolve(uri)
    try:
        return pq.read_schema(path, filesystem=fs).names
    except (pa.ArrowException, OSError) as err:
        raise ShardError(f"shard {uri} is not a readable Parquet file ({str(err).splitlines()[0][:200]})") from None


def lacking(files, needed) -> tuple[str, list[str], list[str]] | None:
    """(the first of `files` whose schema lacks any `needed` column, those columns, its columns),
    or None when every file has them all."""
    for uri in files:
        names = schema_names(uri)
        missing = [c for c in needed if c not in names]
        if missing:
            return uri, missing, names
    return None


def unfit(files, needed, reads: str) -> str | None:
    """Why shard `files` cannot serve a reader of the `needed` columns (`reads`: who reads them, as
    "training reads"),
    naming the first file that lacks any; None when they can. A file that is not Parquet is a
    ShardError."""
    found = lacking(files, needed)
    if found is None:
        return None
    uri, missing, names = found
    hint = "; a caption the loss does not use may be a column of NULLs" if set(missing) & set(CAPTION_COLUMNS) else ""
    return (
        f"{uri} has no column {', '.join(map(repr, missing))} (its columns: {', '.join(names)}); "
        f"{reads} {', '.join(needed)}{hint}"
    )
