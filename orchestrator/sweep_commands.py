"""Commands on ablation specs and their sweeps: demo, sweep, table."""
import time
from pathlib import Path

from .errors import UserError
from .runtime import home, tracking_uri


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


def add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="the laptop-sized tour: scenes -> smoke sweep -> table")
    demo.set_defaults(func=cmd_demo)


def add_parsers(sub) -> None:
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
