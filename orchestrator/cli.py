"""`tipslab`: the one entry point. A mistake of the user's exits with code 2 and one message."""
import argparse
import sys
import time
from pathlib import Path

from . import model_commands
from .errors import UserError
from .runtime import home, quiet_environment, tracking_uri


def cmd_data_scenes(args) -> None:
    from tipslab.jobs.data.scenes import SPLIT_OFFSETS, generate_scenes

    if args.split not in SPLIT_OFFSETS:
        raise UserError(f"--split: {args.split!r} is not one of {', '.join(SPLIT_OFFSETS)}")
    manifest = generate_scenes(args.out, args.n, split=args.split, seed=args.seed, size=args.size)
    print(f"wrote {manifest['num_rows']} scenes in {len(manifest['shards'])} shards to {args.out} "
          f"(content hash {manifest['content_hash'][:12]})")


def cmd_train(args) -> None:
    from .single import run_single

    finish(run_single(args.config, args.overrides, address=args.address))


def cmd_sweep(args) -> None:
    from .spec import load_spec
    from .sweep import run_sweep

    finish(run_sweep(load_spec(args.spec, smoke=args.smoke, overrides=args.overrides), address=args.address))


def finish(result, footer: str = "") -> None:
    """Print a finished sweep's table from MLflow; fail the command if a trial failed."""
    from tipslab.dashboards.store import load_sweep
    from tipslab.dashboards.table import render

    print()
    print(render(load_sweep(tracking_uri(), result.experiment, result.sweep_id)))
    print(f"\nMLflow: experiment {result.experiment!r}, parent run {result.parent_run_id} in {tracking_uri()}")
    if footer:
        print(footer)
    if result.failed:
        raise SystemExit(f"tipslab: {len(result.failed)} trial(s) failed: {', '.join(result.failed)}")


def cmd_table(args) -> None:
    from tipslab.dashboards.store import StoreError, load_sweep
    from tipslab.dashboards.table import render

    try:
        print(render(load_sweep(tracking_uri(), args.experiment, args.sweep), args.format))
    except StoreError as err:
        raise UserError(str(err)) from None


def cmd_demo(args) -> None:
    from .spec import load_spec
    from .sweep import run_sweep

    spec = Path("ablations/smoke.yaml")
    if not spec.is_file():  # run from outside a checkout: the specs beside the installed sources
        spec = Path(__file__).resolve().parent.parent / "ablations" / "smoke.yaml"
    start = time.perf_counter()
    print(f"tipslab demo: procedural scenes -> smoke sweep ({spec}) -> table; everything under {home()}")
    result = run_sweep(load_spec(spec, smoke=True))
    finish(result, footer=(
        f"demo took {time.perf_counter() - start:.0f} s. See every run in the MLflow UI:\n"
        f"  .venv/bin/mlflow ui --backend-store-uri {tracking_uri()}\n"
        f"then open http://127.0.0.1:5000 (experiment '{result.experiment}')."))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tipslab", description="TIPS ablations on Ray, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the laptop-sized tour: scenes -> smoke sweep -> table")
    demo.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="make and inspect data shards")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    scenes = data_sub.add_parser("scenes", help="render procedural scenes into Parquet shards")
    scenes.add_argument("out", help="output folder for the shards and manifest")
    scenes.add_argument("--n", type=int, default=1024, help="number of scenes (default 1024)")
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--split", default="train", help="train | probe_train | probe_test")
    scenes.add_argument("--size", type=int, default=112, help="image size in pixels (default 112)")
    scenes.set_defaults(func=cmd_data_scenes)
    model_commands.add_data_parsers(data_sub)

    train = sub.add_parser("train", help="one training run, then its evaluation")
    train.add_argument("config", help="an experiment YAML, e.g. ablations/base/tips_tiny.yaml")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="run an ablation spec as a Ray Tune sweep")
    sweep.add_argument("spec", help="an ablation spec, e.g. ablations/smoke.yaml")
    sweep.add_argument("overrides", nargs="*", metavar="key=value")
    sweep.add_argument("--smoke", action="store_true", help="apply the spec's laptop-sized `smoke` overlay")
    sweep.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    sweep.set_defaults(func=cmd_sweep)

    table = sub.add_parser("table", help="the ablation table of a sweep, from MLflow alone")
    table.add_argument("experiment", help="the spec's name (the MLflow experiment)")
    table.add_argument("--sweep", help="a sweep id (default: the latest sweep)")
    table.add_argument("--format", choices=["md", "csv"], default="md")
    table.set_defaults(func=cmd_table)
    model_commands.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"tipslab: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
