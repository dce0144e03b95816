"""`tipslab`: the one entry point. A mistake of the user's exits with code 2 and one message.

Each area owns its commands in a module of its own (`*_commands.py`, each with `add_parsers`); this
file only puts them together.
"""
import argparse
import sys

from . import bench_commands, data_commands, eval_commands, model_commands, sweep_commands, train_commands
from .errors import CommandFailed, UserError
from .runtime import quiet_environment


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tipslab", description="TIPS ablations on Ray, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sweep_commands.add_demo_parser(sub)
    data_commands.add_parsers(sub)
    train_commands.add_parsers(sub)
    eval_commands.add_parsers(sub)
    sweep_commands.add_parsers(sub)
    model_commands.add_parsers(sub)
    bench_commands.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"tipslab: error: {err}", file=sys.stderr)
        return 2
    except CommandFailed as err:
        print(f"tipslab: failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
