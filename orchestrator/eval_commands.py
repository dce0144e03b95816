"""`tipslab eval`: the paper's probes on any checkpoint, or on an MLflow run's checkpoint with the
results appended to that run (so probes can be re-run or added without retraining)."""

import dataclasses
import json
import os
import sys
import tempfile
import time

from tipslab.jobs.redact import redact

from .errors import PATH_ERRORS, UserError
from .runtime import ensure_ray, home, tracking_uri


def parse_data(items: list[str] | None, ev: dict) -> None:
    """--data DATASET[=PATH] items -> eval.dataset / eval.datasets / data root overrides, in place."""
    from tipslab.jobs.eval.evalsets import STANDARD

    if not items:
        return
    ev["dataset"], ev["datasets"], ev["_root"] = "", {}, None
    for item in items:
        name, sep, path = item.partition("=")
        if name == "scenes":
            ev["dataset"], ev["_root"] = "scenes", (os.path.abspath(path) if sep else None)
        elif name in STANDARD:
            if not sep or not path:
                raise UserError(f"--data {item}: give the dataset's folder, as {name}=PATH")
            if not os.path.exists(path):
                raise UserError(f"--data {item}: {path}: no such file or folder")
            ev["datasets"][name] = os.path.abspath(path)
        else:
            raise UserError(f"--data {item}: unknown dataset {name!r}; known: scenes, {', '.join(STANDARD)}")


def experiment_for(checkpoint: str, data: list[str] | None):
    """The checkpoint's own config, with the datasets of --data and an absolute scenes root, typed
    (an ExperimentConfig: keys the checkpoint lacks take their defaults)."""
    from tipslab.jobs.config import experiment
    from tipslab.jobs.eval.probes.features import local_checkpoint
    from tipslab.models.checkpoint import load_state, student_weights

    try:
        with local_checkpoint(checkpoint) as folder:
            state = load_state(folder)
    except PATH_ERRORS as err:  # a bad checkpoint's contents are a DataError already
        raise UserError(f"{checkpoint}: cannot read the checkpoint ({err})") from None
    exp = state.get("config") if isinstance(state, dict) else None
    sections = ("model", "loss", "data", "train", "eval")
    if not isinstance(exp, dict) or not all(isinstance(exp.get(s, {}), dict) for s in sections):
        raise UserError(f"{checkpoint}: not a tipslab checkpoint (its model.pt holds no config of sections {sections})")
    ev = dict(exp.get("eval") or {})
    parse_data(data, ev)
    root = ev.pop("_root", None)
    exp = {**exp, "eval": ev, "data": dict(exp.get("data") or {})}
    if root:
        exp["data"]["root"] = root
    elif not exp["data"].get("root"):
        exp["data"]["root"] = str(home() / "data" / "scenes")
    try:
        exp = experiment(exp)
    except UserError as err:
        raise UserError(f"{checkpoint}: the checkpoint's config: {err}") from None
    if not isinstance(state.get("student"), dict) or not state["student"]:
        raise UserError(f"{checkpoint}: not a tipslab checkpoint (its model.pt holds no student weights)")
    student_weights(state, checkpoint)  # NaN or Inf weights: refused here, before Ray
    return exp


def probe_splits_ready(exp) -> None:
    """Render the scenes' probe splits when the checkpoint's data are scenes and they are missing."""
    from .meter import ensure_scenes_shown

    data, ev = exp.data, exp.eval
    if ev.dataset and data.source == "scenes":
        # ensure_scenes renders data.train_split too: point it at probe-train, sized like a probe split.
        ensure_scenes_shown(
            dataclasses.replace(
                exp, data=dataclasses.replace(data, train_split=ev.probe_train_split, scenes_train=data.scenes_probe)
            )
        )


def run_evaluation(checkpoint: str, exp, out_dir: str, address: str | None):
    from tipslab.jobs.eval.evaluate import evaluate

    probe_splits_ready(exp)
    ensure_ray(address)
    # Bad datasets are DataErrors, bad settings ConfigErrors; each probe is told as it ends.
    return evaluate(checkpoint, exp, out_dir, on_progress=lambda line: print(redact(line), file=sys.stderr, flush=True))


def append_to_run(client, run_id: str, result, out_dir: str) -> None:
    """eval/* metrics at the run's last training step; eval_results.json merged; features.npz."""
    from tipslab.jobs.eval.evaluate import FEATURES_FILE, RESULTS_FILE

    from .tracking_outside import append_eval

    features = os.path.join(out_dir, FEATURES_FILE)
    append_eval(
        client,
        run_id,
        {**result.metrics, "perf/eval_seconds": result.seconds["total"]},
        RESULTS_FILE,
        features if os.path.isfile(features) else None,
        result.protocols,
    )


def cmd_eval(args) -> None:
    if bool(args.checkpoint) == bool(args.run):
        raise UserError("give a CHECKPOINT or --run RUN_ID (one of them)")
    client = None
    checkpoint = args.checkpoint
    if args.run:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from .run_tags import CHECKPOINT

        client = MlflowClient(tracking_uri())
        try:
            run = client.get_run(args.run)
        except MlflowException:
            raise UserError(f"--run {args.run}: no such run in {redact(tracking_uri())}") from None
        checkpoint = run.data.tags.get(CHECKPOINT)
        if not checkpoint:
            raise UserError(f"--run {args.run}: the run has no {CHECKPOINT} tag (it finished no training)")
    if not checkpoint.startswith("s3://") and not os.path.isdir(checkpoint):
        raise UserError(f"{checkpoint}: no such checkpoint folder")
    exp = experiment_for(checkpoint, args.data)
    with tempfile.TemporaryDirectory(prefix="tipslab-eval-") as tmp:
        out_dir = args.out or (tmp if args.run else str(home() / "eval" / time.strftime("%Y%m%d-%H%M%S")))
        result = run_evaluation(checkpoint, exp, out_dir, args.address)
        if client is not None:
            append_to_run(client, args.run, result, out_dir)
    report = {
        "checkpoint": checkpoint,
        "run_id": args.run,
        "out_dir": None if args.run and not args.out else out_dir,
        "metrics": result.metrics,
        "skipped": result.skipped,
        "seconds": result.seconds,
    }
    if args.json:
        print(redact(json.dumps(report, indent=2, sort_keys=True)))
        return
    for key, value in sorted(result.metrics.items()):
        print(f"{redact(key):40s} {value:10.4f}")
    for probe, why in sorted(result.skipped.items()):
        print(redact(f"skipped {probe}: {why}"))
    print(
        redact(
            f"evaluated in {result.seconds['total']:.1f} s"
            + (f"; appended to run {args.run}" if args.run else f"; results in {out_dir}")
        )
    )


def add_parsers(sub) -> None:
    ev = sub.add_parser("eval", help="the paper's probes on a checkpoint's frozen features")
    ev.add_argument(
        "checkpoint",
        nargs="?",
        help="a tipslab checkpoint folder or s3:// URI (official TIPS weights after `tipslab checkpoint import`)",
    )
    ev.add_argument("--run", metavar="RUN_ID", help="evaluate this MLflow run's checkpoint and append to the run")
    ev.add_argument(
        "--data",
        action="append",
        metavar="DATASET[=PATH]",
        help="scenes[=ROOT] (the probe splits; default) or NAME=PATH for imagenet (class folders), "
        "coco, flickr30k (Karpathy JSON), pascal_voc, ade20k, nyuv2; repeatable",
    )
    ev.add_argument(
        "--out",
        help="folder for eval_results.json and features.npz "
        "(default: $TIPSLAB_HOME/eval/<time>; with --run, the run's artifacts)",
    )
    ev.add_argument("--json", action="store_true", help="print the results as JSON")
    ev.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    ev.set_defaults(func=cmd_eval)
