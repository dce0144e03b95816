"""`tipslab`: the one entry point. A mistake of the user's exits with code 2 and one message.

Each area owns its commands in a module of its own (`*_commands.py`, each with `add_parsers`); this
file only puts them together.
"""

import argparse
import re
import sys
from importlib.metadata import version

from tipslab.jobs.redact import redact

from . import bench_commands, data_commands, eval_commands, model_commands, sweep_commands, train_commands
from .errors import CommandFailed, UserError
from .runtime import quiet_environment, tracking_uri


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tipslab", description="TIPS ablations on Ray, tracked in MLflow.")
    p.add_argument("--version", action="version", version=f"tipslab {version('tipslab')}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sweep_commands.add_demo_parser(sub)
    data_commands.add_parsers(sub)
    train_commands.add_parsers(sub)
    eval_commands.add_parsers(sub)
    sweep_commands.add_parsers(sub)
    model_commands.add_parsers(sub)
    bench_commands.add_parsers(sub)
    return p


# A config override: a dotted key (section.key[.key...]) then `=`.
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line, with `key=value` overrides anywhere in it, as with Hydra (`tipslab sweep
    SPEC --smoke train.steps=20`): argparse alone would take a command's trailing overrides only
    before its options. They keep their order (a later one wins)."""
    overrides = [a for a in argv if OVERRIDE.match(a)]
    p = parser()
    args = p.parse_args([a for a in argv if not OVERRIDE.match(a)])
    if overrides:
        if not hasattr(args, "overrides"):
            p.error(f"{' '.join(overrides)}: this command takes no key=value overrides")
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = parse(sys.argv[1:] if argv is None else list(argv))
    try:
        args.func(args)
    except UserError as err:
        print(redact(f"tipslab: error: {err}"), file=sys.stderr)
        return 2
    except CommandFailed as err:
        print(redact(f"tipslab: failed: {err}"), file=sys.stderr)
        return 1
    except Exception as err:
        message = store_fault(err)
        if message is None:
            raise
        print(f"tipslab: error: {message}", file=sys.stderr)
        return 2
    return 0


def store_fault(err: Exception) -> str | None:
    """One line for an MLflow store that is locked, corrupt or unreachable (every command reads or
    writes it), else None: the error is not the store's."""
    from .faults import fault, store_message, wrapped_by

    if fault(err) in ("locked", "corrupt", "unreachable") and wrapped_by(err, ("mlflow.", "sqlalchemy.")):
        return store_message(fault(err), tracking_uri())
    return None


if __name__ == "__main__":
    sys.exit(main())
