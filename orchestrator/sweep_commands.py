"""Commands on ablation specs and their sweeps: demo, plan, sweep, table, report, ui."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tipslab.jobs.redact import redact

from .errors import CommandFailed, UserError
from .runtime import home, tracking_uri

UI_HINT = (
    "In the UI: each link above opens a sweep's runs grouped by variant (means over seeds); 'Group by' a "
    "tipslab.axis.* tag instead, or filter with  tags.`tipslab.variant` = 'NAME'."
)


def cmd_sweep(args) -> None:
    from .config import missing_data
    from .launch import check_launch
    from .spec import load_spec

    plan = load_spec(args.spec, size=args.size, overrides=args.overrides)  # before torch, Ray or MLflow load
    missing = missing_data([t.config for t in plan.trials], str(args.spec))
    if missing:
        raise UserError(missing[0])
    check_launch(plan)  # the tokenizer a run needs, which a plan may still lack
    from .sweep import run_sweep

    result = run_sweep(plan, address=args.address, resume=args.resume)
    if args.resume:
        went_on = f" ({result.reopened} in the run a dead driver had left)" if result.reopened else ""
        kept = f"kept {result.kept} finished run(s), closed {result.closed} left RUNNING"
        print(f"resume: {kept}, ran {result.ran}{went_on}")
    finish(result)


def finish(result, footer: str = "") -> None:
    """Print a finished sweep's table from MLflow; fail the command if a trial failed."""
    from tipslab.dashboards.store import load_sweep
    from tipslab.dashboards.table import render

    print()
    print(render(load_sweep(tracking_uri(), result.experiment, result.sweep_id)))
    print(redact(f"\nMLflow: experiment {result.experiment!r}, parent run {result.parent_run_id} in {tracking_uri()}"))
    if footer:
        print(footer)
    if result.failed:
        raise CommandFailed(
            f"{len(result.failed)} trial(s) failed: {', '.join(result.failed)} (their errors are "
            f"in the trial runs of parent run {result.parent_run_id})"
        )


def cmd_plan(args) -> None:
    from .config import missing_data
    from .plan import format_plan, plan_summary
    from .recipe import format_recipe, recipe, summary_line
    from .spec import load_spec

    plan = load_spec(args.spec, size=args.size, overrides=args.overrides)
    summary = plan_summary(plan, tracking_uri())
    # A plan may be made before the data exist (to size the cluster): missing shards are a warning.
    summary["warnings"] += missing_data([t.config for t in plan.trials], str(args.spec))
    card = recipe(plan)
    if args.json:
        print(redact(json.dumps({**summary, "recipe": card} if args.recipe else summary, indent=2)))
        return
    print(redact(format_plan(summary)))
    print(redact(f"\n{format_recipe(card)}" if args.recipe else summary_line(card)))


def cmd_config(args) -> None:
    """The resolved config of one trial of a spec, as the trial would receive it (Hydra's --cfg job)."""
    import yaml

    from .spec import load_spec

    plan = load_spec(args.spec, size=args.size, overrides=args.overrides)
    variants = list(dict.fromkeys(t.variant for t in plan.trials))
    variant = args.variant or variants[0]
    trial = next((t for t in plan.trials if t.variant == variant and (args.seed is None or t.seed == args.seed)), None)
    if trial is None:
        seeds = sorted({t.seed for t in plan.trials})
        raise UserError(
            f"{args.spec}: no trial with variant {variant!r} and seed {args.seed} at size {plan.size} "
            f"(variants: {', '.join(variants)}; seeds: {seeds})"
        )
    if args.json:
        print(redact(json.dumps(trial.config, indent=2, sort_keys=True)))
        return
    print(
        f"# {args.spec}, size {plan.size}, variant {trial.variant}, seed {trial.seed}, config hash {trial.config_hash}"
    )
    print(redact(yaml.safe_dump(trial.config, sort_keys=False)), end="")


def _sweep(args):
    from .spec import SIZES

    if args.size is not None and args.size not in SIZES:
        raise UserError(f"--size: {args.size!r} is not a size; sizes: {', '.join(SIZES)}")
    if args.sweep is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.sweep):
        # it goes into an MLflow search filter: a quote would end the string (sweep ids are 12 hex digits)
        raise UserError(f"--sweep: {args.sweep!r} is not a sweep id (letters, digits, '.', '_', '-')")
    from tipslab.dashboards.store import StoreError, load_sweep

    try:
        return load_sweep(tracking_uri(), args.experiment, args.sweep, size=args.size)
    except StoreError as err:
        raise UserError(str(err)) from None


def cmd_table(args) -> None:
    sweep = _sweep(args)
    from tipslab.dashboards.table import render

    print(render(sweep, args.format))


def cmd_report(args) -> None:
    sweep = _sweep(args)
    from tipslab.dashboards.report import write_report

    path = write_report(sweep, args.out)
    print(f"report: {path}")


# The embedded store's UI: one worker (a laptop's browser is its one client); no job runner (MLflow
# starts it for GenAI features tipslab does not use: its processes only slow the start); artifacts
# served from the store's own folder, so that `mlflow-artifacts:/` URIs resolve wherever the store
# lies; Python's deprecation warnings and uvicorn's access log off.
UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONWARNINGS": "ignore"}


def ui_command(uri: str, host: str, port: int) -> list[str]:
    from tipslab.dashboards.store import store_artifact_root

    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host]
    command += ["--port", str(port), "--workers", "1", "--uvicorn-opts", "--log-level warning"]
    artifacts = store_artifact_root(uri)
    if artifacts is not None:
        command += ["--serve-artifacts", "--artifacts-destination", str(artifacts)]
    return command


def comparison_links(uri: str, url: str) -> list[tuple[str, str]]:
    """Each sweep experiment's comparison view (runs grouped by variant, metric columns)."""
    from tipslab.dashboards.store import client_for

    from .run_tags import VIEW_KEY, VIEW_TAG

    experiments = client_for(uri).search_experiments(filter_string=f"tags.`{VIEW_TAG}` LIKE '%'")
    query = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return [(e.name, f"{url}/#/experiments/{e.experiment_id}/runs?{query}") for e in experiments]


def wait_until_up(proc, url: str, timeout_s: float = 300) -> bool:
    """Poll the server's /health until it answers (True) or the process ends or time runs out."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def ui_installed() -> bool:
    """The full `mlflow` distribution (its server, UI and their stack) is installed, not only the client."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("mlflow")
    except PackageNotFoundError:
        return False
    return True


def cmd_ui(args) -> None:
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"the tracking server {redact(uri)} serves the UI itself: open it in a browser.\n{UI_HINT}")
        return
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///") :]):
        raise UserError(f"no MLflow store at {uri}: run a sweep first, or set MLFLOW_TRACKING_URI")
    if not ui_installed():
        raise UserError(
            "the MLflow UI is not installed here (tipslab needs only MLflow's client, mlflow-skinny): "
            "pip install 'tipslab[ui]'"
        )
    url = f"http://{args.host}:{args.port}"
    print(f"MLflow UI on {redact(uri)}: starting ...", flush=True)
    proc = subprocess.Popen(ui_command(uri, args.host, args.port), env={**os.environ, **UI_ENV})
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated `tipslab ui` stops its server too
    try:
        if wait_until_up(proc, url):
            print(f"MLflow UI up: {url}/#/experiments?workflowType=machine_learning  (Ctrl-C to stop)", flush=True)
            for name, link in comparison_links(uri, url):
                print(f"  {name}: {link}", flush=True)
            print(UI_HINT, flush=True)
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return
    if proc.returncode != 0:
        raise CommandFailed(f"the MLflow server stopped with exit status {proc.returncode} (its lines above say why)")


def cmd_demo(args) -> None:
    from .spec import load_spec
    from .sweep import run_sweep

    spec = Path("ablations/smoke.yaml")
    if not spec.is_file():  # run from outside a checkout: the specs beside the installed sources
        spec = Path(__file__).resolve().parent.parent / "ablations" / "smoke.yaml"
    start = time.perf_counter()
    print(f"tipslab demo: procedural scenes -> smoke sweep ({spec}) -> table; everything under {home()}")
    plan = load_spec(spec, smoke=True)
    result = run_sweep(plan)
    table_start = time.perf_counter()
    try:
        finish(result)
    finally:
        wall, table_s = time.perf_counter() - start, time.perf_counter() - table_start
        print_breakdown(plan, result, wall, table_s)
    print(
        f"demo took {wall:.0f} s. See every run in the MLflow UI:\n  .venv/bin/tipslab ui\n"
        f"then open the link it prints for experiment '{result.experiment}' (runs grouped by variant)."
    )


def print_breakdown(plan, result, wall_s: float, table_s: float) -> None:
    """Where the demo's time went (orchestrator/demo.py), with `bench step` at the trainer's setting."""
    from mlflow.tracking import MlflowClient

    from .bench_runs import run_step_job
    from .demo import breakdown, trial_times

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(result.experiment)
    trials = trial_times(client, result.parent_run_id, experiment.experiment_id) if experiment else []
    bench = None
    if trials:
        job = {"exp": plan.trials[0].config, "batch_size": trials[0].batch_size, "repeats": 5}
        try:
            bench = run_step_job({**job, "threads": trials[0].threads})
        except CommandFailed as err:
            print(f"(bench step beside the trainer failed: {str(err).splitlines()[0]})")
    print()
    print(breakdown(result.timings, trials, table_s, wall_s, bench))


def add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="the laptop-sized tour: scenes -> smoke sweep -> table")
    demo.set_defaults(func=cmd_demo)


SIZE_HELP = (
    "full: the spec as written (the paper's setting); mini: its `mini` overlay (procedural scenes on CPU, "
    "several seeds); smoke: its `smoke` overlay (the machinery in minutes)"
)


def add_size_arguments(p) -> None:
    """--size full|mini|smoke, and --smoke for --size smoke. A size is checked against the spec
    (spec.load_spec), so that a wrong one is one line naming the spec file."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--size", default="full", metavar="full|mini|smoke", help=SIZE_HELP)
    group.add_argument("--smoke", dest="size", action="store_const", const="smoke", help="the same as --size smoke")


def add_parsers(sub) -> None:
    plan = sub.add_parser(
        "plan", help="the trials of a spec, their resources and estimated GPU- or CPU-hours; runs nothing"
    )
    plan.add_argument("spec", help="an ablation spec, e.g. ablations/tips_losses.yaml")
    plan.add_argument("overrides", nargs="*", metavar="key=value")
    add_size_arguments(plan)
    plan.add_argument("--json", action="store_true", help="stable machine-readable output")
    plan.add_argument(
        "--recipe",
        action="store_true",
        help="the recipe card: every setting of each row with its source (the paper, DINOv2, ..., or a guess)",
    )
    plan.set_defaults(func=cmd_plan)

    config = sub.add_parser(
        "config",
        help="the resolved config of one trial of a spec (base <- spec <- variant <- command line); runs nothing",
    )
    config.add_argument("spec", help="an ablation spec, e.g. ablations/tips_losses.yaml")
    config.add_argument("overrides", nargs="*", metavar="key=value")
    add_size_arguments(config)
    config.add_argument("--variant", help="the row (default: the first)")
    config.add_argument("--seed", type=int, help="the seed (default: the first)")
    config.add_argument("--json", action="store_true", help="JSON instead of YAML")
    config.set_defaults(func=cmd_config)

    sweep = sub.add_parser("sweep", help="run an ablation spec as a Ray Tune sweep")
    sweep.add_argument("spec", help="an ablation spec, e.g. ablations/smoke.yaml")
    sweep.add_argument("overrides", nargs="*", metavar="key=value")
    add_size_arguments(sweep)
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest sweep of this spec and size: keep finished runs with the same "
        "config hash, close runs a dead driver left RUNNING, run only what is missing",
    )
    sweep.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    sweep.set_defaults(func=cmd_sweep)

    for name, text in (
        ("table", "the ablation table of a sweep, from MLflow alone"),
        ("report", "a static HTML report of a sweep (table, curves, bars, PCA maps), from MLflow alone"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("experiment", help="the spec's name (the MLflow experiment)")
        p.add_argument("--sweep", help="a sweep id (default: the latest sweep)")
        p.add_argument(
            "--size",
            metavar="full|mini|smoke",
            help="the latest sweep of this size (default: the latest sweep of any size)",
        )
        if name == "table":
            p.add_argument("--format", choices=["md", "html", "latex", "csv"], default="md")
            p.set_defaults(func=cmd_table)
        else:
            p.add_argument("--out", required=True, help="folder for index.html and its images")
            p.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="the MLflow UI on the store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
