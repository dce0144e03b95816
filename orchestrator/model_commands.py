"""Commands on checkpoints and towers: checkpoint import/export, embed."""

import json
import os

from .config import to_dict
from .errors import UserError


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
    # The checkpoint carries the tokenizer that model.tokenizer names; what cannot be imported is a DataError.
    path = import_checkpoint(args.vision, args.text, args.out, base, heads=args.heads)
    print(f"wrote {path}")


def cmd_checkpoint_export(args) -> None:
    from tipslab.models.official import export_checkpoint

    try:
        vision, text = export_checkpoint(args.checkpoint, args.prefix)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    print(f"wrote {vision} and {text}")


def cmd_embed(args) -> None:
    from tipslab.jobs.eval.embed import EmbedError, embed

    if not args.images and not args.text:
        raise UserError("give at least one IMAGE or --text")
    try:
        arrays = embed(args.checkpoint, args.images, args.text or [], args.out)
    except (EmbedError, FileNotFoundError) as err:
        raise UserError(str(err)) from None
    shapes = {k: list(v.shape) for k, v in arrays.items() if k not in ("images", "texts")}
    print(f"wrote {args.out}: {json.dumps(shapes)}")


def add_parsers(sub) -> None:
    checkpoint = sub.add_parser("checkpoint", help="official TIPS weights <-> tipslab checkpoints")
    cp_sub = checkpoint.add_subparsers(dest="checkpoint_command", required=True, metavar="CHECKPOINT_COMMAND")
    imp = cp_sub.add_parser("import", help="official .npz towers -> a tipslab checkpoint folder")
    imp.add_argument(
        "--vision", required=True, help="the vision tower .npz (e.g. tips_oss_b14_highres_distilled_vision.npz)"
    )
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
