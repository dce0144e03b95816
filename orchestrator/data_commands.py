"""`tipslab data`: make, inspect and repair shards."""

import os

from .errors import PATH_ERRORS, CommandFailed, UserError


def cmd_data_scenes(args) -> None:
    import json

    from tipslab.jobs.data.scenes.generate import SPLIT_OFFSETS, generate_scenes

    if args.split not in SPLIT_OFFSETS:
        raise UserError(f"--split: {args.split!r} is not one of {', '.join(SPLIT_OFFSETS)}")
    for flag, value, ok in (
        ("--n", args.n, args.n >= 0),
        ("--size", args.size, args.size >= 16),
        ("--web-noise", args.web_noise, 0.0 <= args.web_noise <= 1.0),
        ("--max-objects", args.max_objects, 1 <= args.max_objects <= 9),
        ("--rows-per-shard", args.rows_per_shard, args.rows_per_shard >= 1),
    ):
        if not ok:
            raise UserError(f"{flag}: {value} is out of range (see tipslab data scenes --help)")
    from .meter import Meter

    if args.parallel:
        from .runtime import ensure_ray

        ensure_ray()
    try:
        with Meter(f"rendering scenes {args.split}", "scenes", closes_at_total=False) as meter:
            manifest = generate_scenes(
                args.out,
                args.n,
                split=args.split,
                seed=args.seed,
                size=args.size,
                web_noise=args.web_noise,
                max_objects=args.max_objects,
                rows_per_shard=args.rows_per_shard,
                parallel=args.parallel,
                on_progress=meter,
            )
    except PATH_ERRORS as err:
        raise UserError(f"{args.out}: {err}") from None
    if args.json:
        print(
            json.dumps(
                {k: manifest[k] for k in ("num_rows", "content_hash", "schema_version", "source")}
                | {"out": args.out, "shards": len(manifest["shards"])},
                sort_keys=True,
            )
        )
        return
    print(
        f"wrote {manifest['num_rows']} scenes in {len(manifest['shards'])} shards to {args.out} "
        f"(content hash {manifest['content_hash'][:12]})"
    )


def cmd_data_tokenizer(args) -> None:
    import pyarrow.parquet as pq

    from tipslab.jobs.data.shards.format import ShardError, shard_files
    from tipslab.models.tokenizer import train_sentencepiece_file

    try:
        files = shard_files(args.shards)
    except ShardError as err:
        raise UserError(str(err)) from None

    def captions():
        for f in files:
            table = pq.read_table(f, columns=["web_caption", "synthetic_caption"])
            for column in table.columns:
                yield from (c for c in column.to_pylist() if c)

    path = train_sentencepiece_file(captions(), args.out, vocab_size=args.vocab_size)
    print(
        f"wrote {path} (vocabulary {args.vocab_size}); train with model.tokenizer={path} "
        f"model.vocab_size={args.vocab_size}"
    )


def add_parsers(sub) -> None:
    data = sub.add_parser("data", help="make and inspect data shards")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    scenes = data_sub.add_parser("scenes", help="render procedural scenes into Parquet shards")
    scenes.add_argument(
        "out",
        help="output folder or s3://bucket/prefix for the shards and manifest "
        "(S3 endpoint and credentials from the standard AWS_* variables)",
    )
    scenes.add_argument("--n", type=int, default=1024, help="number of scenes (default 1024)")
    scenes.add_argument("--seed", type=int, default=0, help="first scene of the split (default 0)")
    scenes.add_argument("--split", default="train", help="train | probe_train | probe_test")
    scenes.add_argument("--size", type=int, default=112, help="image size in pixels (default 112)")
    scenes.add_argument("--web-noise", type=float, default=0.3, help="fraction of off-topic web captions (default 0.3)")
    scenes.add_argument("--max-objects", type=int, default=4, help="objects per scene, 1..9 (default 4)")
    scenes.add_argument("--rows-per-shard", type=int, default=256)
    scenes.add_argument(
        "--parallel", action="store_true", help="one Ray task per shard on a local Ray instance or RAY_ADDRESS"
    )
    scenes.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    scenes.set_defaults(func=cmd_data_scenes)

    tok = data_sub.add_parser("tokenizer", help="train a SentencePiece tokenizer on the shards' captions")
    tok.add_argument("shards", help="a shard folder (with manifest.json)")
    tok.add_argument("out", help="the tokenizer.model to write")
    tok.add_argument("--vocab-size", type=int, default=32000)
    tok.set_defaults(func=cmd_data_tokenizer)

    add_real_data_parsers(data_sub)


# --------------------------------------------------------------------------- real datasets
# ingest, tags, caption, check: bad rows are skipped and named on stderr, and past the bad-row
# fraction the command stops with exit code 2.


def _user_errors(fn):
    """Run ``fn``; a path the user gave that cannot be read or written becomes one UserError line
    (bad data is already a DataError, a kind of UserError; anything else keeps its traceback)."""
    try:
        return fn()
    except PATH_ERRORS as err:
        raise UserError(str(err)) from None


def _print_bad(limit: int = 20, say=None):
    """A callback naming the first ``limit`` bad rows on stderr (through ``say``, a progress
    meter's, where one is shown); the summary counts the rest."""
    import sys

    shown = 0

    def on_bad(err) -> None:
        nonlocal shown
        if shown < limit:
            (say or (lambda line: print(line, file=sys.stderr)))(f"skipped {err}")
        shown += 1

    return on_bad


def _emit(result: dict, as_json: bool, text: str) -> None:
    import json

    print(json.dumps(result, indent=2) if as_json else text)


def _bad_summary(bad: dict) -> str:
    if not bad["bad"]:
        return "no bad rows"
    reasons = ", ".join(f"{r} {n}" for r, n in bad["counts"].items())
    return f"skipped {bad['bad']} bad rows ({reasons})"


def cmd_data_ingest(args) -> None:
    from .meter import Meter

    with Meter(f"ingesting {args.format}", "rows", closes_at_total=False) as meter:
        result = _ingest(args, meter)
    _emit(
        result,
        args.json,
        f"wrote {result['rows']} rows in {result['shards']} shards to {args.out} "
        f"(content hash {result['content_hash'][:12]}); {_bad_summary(result['bad_rows'])}; "
        + (f"{result['joined']} rows took a joined caption; " if args.join else "")
        + f"{result['rows_per_s']:.0f} rows/s",
    )


def _ingest(args, meter) -> dict:
    from tipslab.jobs.data.ingest.sources import ingest

    common = dict(
        max_pixels=args.max_pixels,
        max_bad_fraction=args.max_bad_fraction,
        join=args.join,
        join_column=args.join_column,
        rows_per_shard=args.rows_per_shard,
        on_bad=_print_bad(say=meter.say),
        on_progress=meter,
    )
    if args.parallel:
        from tipslab.jobs.data.ingest.parallel import ingest_webdataset_parallel

        from .runtime import ensure_ray

        if args.format != "webdataset":
            raise UserError("--parallel: only --format webdataset runs in parallel (one Ray task per tar)")
        ensure_ray()
        return _user_errors(lambda: ingest_webdataset_parallel(args.src, args.out, **common))
    return _user_errors(
        lambda: ingest(
            args.format,
            args.src,
            args.out,
            image_column=args.image_column,
            caption_column=args.caption_column,
            key_column=args.key_column,
            images=args.images,
            allow_outside=args.allow_outside,
            **common,
        )
    )


def cmd_data_tags(args) -> None:
    from tipslab.jobs.data.enrichment.tags import tag_shards

    result = _user_errors(
        lambda: tag_shards(args.shards, min_freq=args.min_freq, vocab_path=args.out, out=args.shards_out)
    )
    _emit(
        result,
        args.json,
        f"tagged {result['rows']} rows in {result['shards']}: {result['tagged_fraction']:.1%} have tags, "
        f"{result['mean_tags']} per row; vocabulary of {result['vocab_size']} tags "
        f"(min frequency {args.min_freq}) in {result['vocab']}; train with data.tag_vocab={result['vocab']}",
    )


def cmd_data_caption(args) -> None:
    from tipslab.jobs.data.enrichment.caption import caption_shards

    from .runtime import ensure_ray

    if not os.path.isdir(args.model):  # before starting Ray for nothing
        raise UserError(f"--model {args.model}: not a folder (a model saved with save_pretrained)")
    ensure_ray()
    result = _user_errors(
        lambda: caption_shards(
            args.shards,
            args.model,
            out=args.out,
            actors=args.actors,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            max_pixels=args.max_pixels,
            max_bad_fraction=args.max_bad_fraction,
            prompt=args.prompt,
        )
    )
    _emit(
        result,
        args.json,
        f"captioned {result['captioned']} of {result['rows']} rows in {result['shards']}; "
        f"{_bad_summary(result['bad_rows'])}",
    )


def cmd_data_check(args) -> None:
    from tipslab.jobs.data.shards.check import check_shards, format_report

    report = _user_errors(lambda: check_shards(args.shards, max_pixels=args.max_pixels))
    _emit(report, args.json, format_report(report))
    if args.for_training and not report["training"]["fit"]:  # for a script: the report, then exit 1
        raise CommandFailed(f"data check: {args.shards} is not fit for training: {report['training']['problem']}")


#: jobs/data/ingest/sources.py's FORMATS, spelled out so that `tipslab --help` does not import pyarrow.
INGEST_FORMATS = ("webdataset", "csv", "tsv", "jsonl", "coco")


def bounds(p) -> None:
    """--max-pixels and --json, shared by the commands that read images."""
    from tipslab.jobs.config import DataConfig

    most = DataConfig().max_image_pixels
    p.add_argument(
        "--max-pixels",
        type=int,
        default=most,
        help=f"an image whose header declares more pixels is a bad row, never decoded (default {most})",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def bad_fraction(p) -> None:
    from tipslab.jobs.config import DataConfig

    most = DataConfig().max_bad_fraction
    p.add_argument(
        "--max-bad-fraction", type=float, default=most, help=f"stop past this fraction of bad rows (default {most})"
    )


def add_ingest_parser(data_sub) -> None:
    ingest = data_sub.add_parser(
        "ingest", help="WebDataset tars, CSV/TSV/JSONL tables or COCO captions -> Parquet shards"
    )
    ingest.add_argument("--format", required=True, choices=INGEST_FORMATS)
    ingest.add_argument("src", help="a .tar or folder of tars, a table file, or a COCO caption JSON")
    ingest.add_argument("out", help="output folder or s3:// prefix for the shards")
    ingest.add_argument("--join", help="CSV/TSV/JSONL with key and a caption column for synthetic_caption")
    ingest.add_argument("--join-column", default="synthetic_caption")
    ingest.add_argument("--image-column", default="image", help="tables: image path column")
    ingest.add_argument("--caption-column", default="caption", help="tables: web caption column")
    ingest.add_argument("--key-column", default="key", help="tables: key column (else the image path)")
    ingest.add_argument("--images", help="coco: the image folder (default: the JSON file's folder)")
    ingest.add_argument(
        "--allow-outside",
        action="store_true",
        help="tables, coco: read image paths that lead outside the source folder (../, absolute paths, "
        "links out of it); without it such rows are bad rows (outside_source)",
    )
    ingest.add_argument("--rows-per-shard", type=int, default=256)
    ingest.add_argument(
        "--parallel", action="store_true", help="webdataset: one Ray task per tar (else one streaming process)"
    )
    bounds(ingest)
    bad_fraction(ingest)
    ingest.set_defaults(func=cmd_data_ingest)


def add_real_data_parsers(data_sub) -> None:
    add_ingest_parser(data_sub)
    tags = data_sub.add_parser("tags", help="Tag2Text-style tags from the captions, and their vocabulary")
    tags.add_argument("shards", help="a shard folder (rewritten in place unless --shards-out)")
    tags.add_argument(
        "--min-freq", type=int, default=3, help="keep tags parsed from at least this many rows (default 3)"
    )
    tags.add_argument("--out", help="the vocabulary file (default: SHARDS/tag_vocab.txt)")
    tags.add_argument("--shards-out", help="write the re-tagged shards here instead of in place")
    tags.add_argument("--json", action="store_true", help="print the result as JSON")
    tags.set_defaults(func=cmd_data_tags)

    caption = data_sub.add_parser("caption", help="synthetic captions from a local image-to-text model")
    caption.add_argument("shards", help="a shard folder (rewritten in place unless --out)")
    caption.add_argument(
        "--model", required=True, help="folder of a transformers image-to-text model (save_pretrained)"
    )
    caption.add_argument("--out", help="write the captioned shards here instead of in place")
    caption.add_argument("--actors", type=int, default=1, help="model copies (one GPU each if any)")
    caption.add_argument("--batch-size", type=int, default=16)
    caption.add_argument("--max-new-tokens", type=int, default=40)
    caption.add_argument(
        "--prompt",
        help="a prompt-driven captioner's instruction, e.g. PaliGemma's 'caption en' (BLIP or GIT need none)",
    )
    bounds(caption)
    bad_fraction(caption)
    caption.set_defaults(func=cmd_data_caption)

    check = data_sub.add_parser("check", help="what is in the shards, and what is broken")
    check.add_argument("shards", help="a shard folder (with manifest.json)")
    check.add_argument(
        "--for-training", action="store_true", help="exit 1 when training could not read the set (a column missing)"
    )
    bounds(check)
    check.set_defaults(func=cmd_data_check)
