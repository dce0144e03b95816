"""`tipslab data`: make, inspect and repair shards."""
from .errors import UserError


def cmd_data_scenes(args) -> None:
    from tipslab.jobs.data.scenes import SPLIT_OFFSETS, generate_scenes

    if args.split not in SPLIT_OFFSETS:
        raise UserError(f"--split: {args.split!r} is not one of {', '.join(SPLIT_OFFSETS)}")
    manifest = generate_scenes(args.out, args.n, split=args.split, seed=args.seed, size=args.size)
    print(f"wrote {manifest['num_rows']} scenes in {len(manifest['shards'])} shards to {args.out} "
          f"(content hash {manifest['content_hash'][:12]})")


def cmd_data_tokenizer(args) -> None:
    import pyarrow.parquet as pq

    from tipslab.jobs.data.shards import ShardError, shard_files
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
    print(f"wrote {path} (vocabulary {args.vocab_size}); train with model.tokenizer={path} "
          f"model.vocab_size={args.vocab_size}")


def add_parsers(sub) -> None:
    data = sub.add_parser("data", help="make and inspect data shards")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    scenes = data_sub.add_parser("scenes", help="render procedural scenes into Parquet shards")
    scenes.add_argument("out", help="output folder for the shards and manifest")
    scenes.add_argument("--n", type=int, default=1024, help="number of scenes (default 1024)")
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--split", default="train", help="train | probe_train | probe_test")
    scenes.add_argument("--size", type=int, default=112, help="image size in pixels (default 112)")
    scenes.set_defaults(func=cmd_data_scenes)

    tok = data_sub.add_parser("tokenizer", help="train a SentencePiece tokenizer on the shards' captions")
    tok.add_argument("shards", help="a shard folder (with manifest.json)")
    tok.add_argument("out", help="the tokenizer.model to write")
    tok.add_argument("--vocab-size", type=int, default=32000)
    tok.set_defaults(func=cmd_data_tokenizer)
