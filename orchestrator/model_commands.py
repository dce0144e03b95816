"""Commands on checkpoints and towers: checkpoint import/export, embed, data tokenizer, bench step."""
import json
import os
import subprocess
import sys

from .config import load_experiment, to_dict
from .errors import UserError

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ablations", "base", "tips_tiny.yaml")


def cmd_checkpoint_import(args) -> None:
    from tipslab.models.official import import_checkpoint

    from .config import schema

    for path in (args.vision, args.text):
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file")
    if args.tokenizer != "hash" and not os.path.isfile(args.tokenizer):
        raise UserError(f"--tokenizer: {args.tokenizer}: no such file (the official tokenizer.model, or 'hash')")
    base = to_dict(schema())
    base["model"]["tokenizer"] = args.tokenizer if args.tokenizer == "hash" else os.path.abspath(args.tokenizer)
    try:  # the checkpoint carries the tokenizer that model.tokenizer names
        path = import_checkpoint(args.vision, args.text, args.out, base, heads=args.heads)
    except ValueError as err:
        raise UserError(str(err)) from None
    print(f"wrote {path}")


def cmd_checkpoint_export(args) -> None:
    from tipslab.models.official import export_checkpoint

    try:
        vision, text = export_checkpoint(args.checkpoint, args.prefix)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    print(f"wrote {vision} and {text}")


def cmd_embed(args) -> None:
    from tipslab.jobs.embed import EmbedError, embed

    if not args.images and not args.text:
        raise UserError("give at least one IMAGE or --text")
    try:
        arrays = embed(args.checkpoint, args.images, args.text or [], args.out)
    except (EmbedError, FileNotFoundError) as err:
        raise UserError(str(err)) from None
    shapes = {k: list(v.shape) for k, v in arrays.items() if k not in ("images", "texts")}
    print(f"wrote {args.out}: {json.dumps(shapes)}")


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


def cmd_bench_step(args) -> None:
    """Each size in a fresh process, so that each peak memory figure is its own."""
    results = []
    for size in args.sizes:
        config = to_dict(load_experiment(args.config, [f"model.size={size}", *args.overrides]))
        proc = subprocess.run([sys.executable, "-m", "tipslab.jobs.bench", json.dumps(config), str(args.batch_size),
                               str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"tipslab: bench step failed for size {size}:\n{proc.stderr[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'size':>8} {'batch':>5} {'step s':>8} {'img/s':>8} {'peak RSS MB':>12} {'params M':>9}  device")
    for r in results:
        print(f"{r['size']:>8} {r['batch_size']:>5} {r['step_s']:>8.3f} {r['images_per_s']:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['student_params_m']:>9.1f}  {r['device']} ({r['threads']} threads)")


def add_parsers(sub) -> None:
    checkpoint = sub.add_parser("checkpoint", help="official TIPS weights <-> tipslab checkpoints")
    cp_sub = checkpoint.add_subparsers(dest="checkpoint_command", required=True, metavar="CHECKPOINT_COMMAND")
    imp = cp_sub.add_parser("import", help="official .npz towers -> a tipslab checkpoint folder")
    imp.add_argument("--vision", required=True, help="the vision tower .npz (e.g. tips_oss_b14_highres_distilled_vision.npz)")
    imp.add_argument("--text", required=True, help="the text tower .npz (holds the temperature too)")
    imp.add_argument("--tokenizer", required=True, help="the official tokenizer.model, or 'hash'")
    imp.add_argument("--heads", type=int, help="attention heads, when the width is not an official size")
    imp.add_argument("out", help="output checkpoint folder")
    imp.set_defaults(func=cmd_checkpoint_import)
    exp = cp_sub.add_parser("export", help="a tipslab checkpoint -> PREFIX_vision.npz and PREFIX_text.npz")
    exp.add_argument("checkpoint")
    exp.add_argument("prefix")
    exp.set_defaults(func=cmd_checkpoint_export)

    embed = sub.add_parser("embed", help="CLS_1, CLS_2, patch and text embeddings into an .npz")
    embed.add_argument("checkpoint")
    embed.add_argument("images", nargs="*", metavar="IMAGE")
    embed.add_argument("--text", action="append", metavar="T", help="a caption (repeatable)")
    embed.add_argument("--out", required=True, metavar="FILE.npz")
    embed.set_defaults(func=cmd_embed)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH_COMMAND")
    step = bench_sub.add_parser("step", help="one TIPS training step (forward + backward + update) per size")
    step.add_argument("overrides", nargs="*", metavar="key=value")
    step.add_argument("--config", default=TINY, help="experiment YAML (default: the tiny base)")
    step.add_argument("--sizes", nargs="+", default=["tiny"], help="model sizes, e.g. tiny B")
    step.add_argument("--batch-size", type=int, default=8)
    step.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step (median)")
    step.add_argument("--json", action="store_true")
    step.set_defaults(func=cmd_bench_step)


def add_data_parsers(data_sub) -> None:
    tok = data_sub.add_parser("tokenizer", help="train a SentencePiece tokenizer on the shards' captions")
    tok.add_argument("shards", help="a shard folder (with manifest.json)")
    tok.add_argument("out", help="the tokenizer.model to write")
    tok.add_argument("--vocab-size", type=int, default=32000)
    tok.set_defaults(func=cmd_data_tokenizer)
