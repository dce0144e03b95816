"""`tipslab bench`: benchmarks that print figures and log each result to MLflow.

Every result becomes one run of the experiment `tipslab-bench` (tags `tipslab.bench`,
`tipslab.model_size`, `tipslab.device_kind`, `tipslab.device`; metrics `bench/<bench>/*`), where
`tipslab plan` reads them for its GPU-hour estimates. `bench flops` prints the analytic FLOP count
(jobs/bench/flops.py) and logs nothing: it is a function of the config alone.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .config import load_experiment, to_dict
from .errors import UserError
from .runtime import artifact_root, tracking_uri

EXPERIMENT = "tipslab-bench"
TRIAL_EXPERIMENT = "tipslab-bench-trial"  # the sweep runs that `bench trial` launches, kept apart
BASE = Path(__file__).resolve().parent.parent / "ablations" / "base"
CPU_SIZES = ("tiny", "small-cpu")
BENCH, MODEL_SIZE, DEVICE_KIND, DEVICE = "tipslab.bench", "tipslab.model_size", "tipslab.device_kind", "tipslab.device"
STEP_COMPONENTS = ("data_to_device", "student_fwd", "text_fwd", "teacher_fwd", "losses", "backward", "optimizer", "ema")


def default_config(size: str) -> Path:
    """The base experiment of a size: the tiny CPU experiment for our CPU sizes, else the paper's
    B/14 setting (224 px, 8 local crops of 98 px, both captions) with the size swapped."""
    return BASE / ("tips_tiny.yaml" if size in CPU_SIZES else "tips_b14.yaml")


def experiment(config: str | None, size: str | None, overrides: list[str]) -> dict:
    sized = [f"model.size={size}"] if size else []
    path = config or default_config(size or "tiny")
    return to_dict(load_experiment(path, [*sized, *overrides]))


def log_bench(bench: str, model_size: str, result: dict, metrics: dict, params: dict) -> str:
    """One FINISHED run in `tipslab-bench`; returns its id. The result itself is its `bench.json`."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from .tracking import code_version, redact, scrub

    client = MlflowClient(tracking_uri())
    found = client.get_experiment_by_name(EXPERIMENT)
    exp_id = found.experiment_id if found else client.create_experiment(
        EXPERIMENT, artifact_location=f"{artifact_root()}/{EXPERIMENT}")
    run = client.create_run(exp_id, run_name=f"{bench}-{model_size}-{result['device_kind']}", tags={
        BENCH: bench, MODEL_SIZE: model_size, DEVICE_KIND: result["device_kind"], DEVICE: result["device"],
        "tipslab.code_version": code_version()})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"bench/{bench}/{k}", float(v), now, 0) for k, v in metrics.items()
                                      if v is not None],
                     params=[Param(k, redact(v)[:6000]) for k, v in params.items()])
    client.log_dict(run_id, scrub(result), "bench.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def run_step_job(job: dict) -> dict:
    """One size in a fresh process, so that each peak memory figure is its own."""
    proc = subprocess.run([sys.executable, "-m", "tipslab.jobs.bench.step", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"tipslab: bench step failed for size {job['exp']['model']['size']}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def log_step_result(result: dict, exp: dict | None, overrides: str) -> str:
    """Log one step benchmark result to `tipslab-bench`; returns the MLflow run id."""
    metrics = {k: result.get(k) for k in ("images_per_s", "mfu", "step_s", "flops_per_image", "peak_flops",
                                          "components_over_step", "peak_gpu_mem_gb")}
    if not result["compile"]:
        metrics.update({f"{c}_s": result[f"{c}_s"] for c in STEP_COMPONENTS})
    params = {k: result[k] for k in ("batch_size", "threads", "precision", "fused_adamw", "compile", "repeats",
                                     "burst", "peak_source")}
    params["overrides"] = overrides
    return log_bench("step", result["model_size"], {**result, "config": exp}, metrics, params)


def step_jobs(args) -> list[dict]:
    jobs = []
    for size in args.sizes:
        exp = experiment(args.config, size, args.overrides)
        jobs.append({"exp": exp, "batch_size": args.batch_size or exp["data"]["batch_size"], "repeats": args.repeats,
                     "device": args.device, "precision": args.precision, "fused": args.fused,
                     "compile": args.compile, "burst": args.burst or None, "threads": args.threads})
    return jobs


def import_step_results(paths: list[str]) -> list[dict]:
    """Results that `python -m tipslab.jobs.bench.step JOB` printed on a machine without MLflow (a GPU
    node, say: infra/bench-step-gpu.sh), logged here as if `bench step` had run them."""
    results = []
    for path in paths:
        try:
            lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
            result = json.loads(lines[-1])
            missing = [k for k in ("model_size", "device_kind", "device", "images_per_s", "mfu", "step_s",
                                   "compile", "batch_size") if k not in result]
        except (OSError, IndexError, ValueError) as err:
            raise UserError(f"bench step --import {path}: not a step benchmark result ({err})") from None
        if missing:
            raise UserError(f"bench step --import {path}: not a step benchmark result (no {', '.join(missing)})")
        results.append(result)
    for path, result in zip(paths, results):
        result["mlflow_run_id"] = log_step_result(result, None, f"imported from {path}")
    return results


def cmd_bench_step(args) -> None:
    if args.import_results:
        results = import_step_results(args.import_results)
    else:
        if args.write_jobs:
            folder = Path(args.write_jobs)
            folder.mkdir(parents=True, exist_ok=True)
            for job in step_jobs(args):
                path = folder / f"step-{job['exp']['model']['size']}-b{job['batch_size']}.json"
                path.write_text(json.dumps(job))
                print(path)
            return
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UserError("--device cuda: no CUDA device is visible to this process (use --device cpu)")
        results = []
        for job in step_jobs(args):
            result = run_step_job(job)
            result["mlflow_run_id"] = log_step_result(result, job["exp"], " ".join(args.overrides))
            results.append(result)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(f"{r['model_size']}: batch {r['batch_size']} on {r['device_kind']} ({r['device']}, {r['threads']} threads), "
              f"{r['precision']}{', compiled' if r['compile'] else ''}")
        print(f"  {r['images_per_s']:.1f} images/s, {r['step_s']:.4f} s/step (median of {r['repeats']} bursts of "
              f"{r['burst']} steps)")
        print(f"  {r['flops_per_image'] / 1e9:.3f} GFLOP/image; MFU {100 * r['mfu']:.1f}% "
              f"of {r['peak_flops'] / 1e12:.3g} TFLOP/s, {r['peak_source']}")
        if not r["compile"]:
            parts = "  ".join(f"{c} {r[f'{c}_s'] * 1e3:.2f}" for c in STEP_COMPONENTS)
            print(f"  per component, ms: {parts}")
            print(f"  components sum to {100 * r['components_over_step']:.0f}% of the step")
        memory = f"peak GPU memory {r['peak_gpu_mem_gb']:.1f} GB" if r.get("peak_gpu_mem_gb") else f"peak RSS {r['peak_rss_mb']:.0f} MB"
        print(f"  {memory}; MLflow run {r['mlflow_run_id']} ({EXPERIMENT})")


def cmd_bench_flops(args) -> None:
    from tipslab.jobs.bench.flops import step_flops, step_shape, trainable_params

    rows = []
    for size in args.sizes:
        exp = experiment(args.config, size, args.overrides)
        batch = args.batch_size or exp["data"]["batch_size"]
        parts = step_flops(exp, world_size=args.world_size, batch_size=batch)
        shape = step_shape(exp, args.world_size, batch)
        rows.append({
            "model_size": size, "batch_size": batch, "world_size": args.world_size,
            "image_size": exp["model"]["image_size"], "local_crops": shape.local_crops,
            "local_crop_size": exp["data"]["local_crop_size"], "captions": shape.captions,
            "masked_patches": shape.masked, "student_global_passes": shape.student_global_passes,
            "trainable_params": trainable_params(exp)[0],
            "components": {p.name: {"forward": p.forward / batch, "backward": p.backward / batch} for p in parts},
            "flops_per_image": sum(p.total for p in parts) / batch,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        passes = "masked and clean" if r["student_global_passes"] == 2 else "one"
        print(f"{r['model_size']}: {r['image_size']} px global crop ({passes} student passes), "
              f"{r['local_crops']} local crops of {r['local_crop_size']} px, {r['captions']} captions, "
              f"{r['masked_patches']} masked patches; batch {r['batch_size']} x {r['world_size']} devices; "
              f"{r['trainable_params'] / 1e6:.1f} M trainable parameters")
        print(f"  {'GFLOP per image':<22} {'forward':>9} {'backward':>9} {'total':>9}")
        for name, c in r["components"].items():
            print(f"  {name:<22} {c['forward'] / 1e9:>9.3f} {c['backward'] / 1e9:>9.3f} "
                  f"{(c['forward'] + c['backward']) / 1e9:>9.3f}")
        print(f"  {'total':<22} {'':>9} {'':>9} {r['flops_per_image'] / 1e9:>9.3f}")


def cmd_bench_data(args) -> None:
    """B2's measurement (jobs/bench/data.py) on the given shards, or on procedural scenes made at the
    views' image size in a folder of their own (the training scenes are left as they are)."""
    from tipslab.jobs.bench.data import bench_data
    from tipslab.jobs.data.pipeline.prepare import ensure_scenes

    from .runtime import ensure_ray, home

    shards = args.shards
    if shards is None:
        root = str(home() / "data" / f"bench-scenes-{args.image_size}")
        exp = experiment(None, None, [f"data.root={root}", f"model.image_size={args.image_size}",
                                      f"data.scenes_train={args.scenes}", "data.scenes_probe=1"])
        ensure_scenes(exp)
        shards = os.path.join(exp["data"]["root"], exp["data"]["train_split"])
    cluster = ensure_ray(args.address)
    cpus = args.cpus or int(cluster.get("CPU", 1))
    try:
        result = bench_data(shards, cpus=cpus, batch_size=args.batch_size, rows=args.rows, image_size=args.image_size,
                            local_crops=args.local_crops, local_crop_size=args.local_crop_size, augment=args.augment,
                            mask_mode=args.mask_mode, views=args.views)
    except (ValueError, OSError) as err:  # bad shards or settings: the message names them
        raise UserError(str(err)) from None
    result.update(device_kind="cpu", device=cpu_name(), shards=shards)
    metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    params = {k: result[k] for k in ("shards", "augment", "mask_mode", "views")}
    result["mlflow_run_id"] = log_bench("data", "none", result, metrics, params)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"TIPS views ({result['image_size']} px global crop, {result['local_crops']} local crops of "
          f"{result['local_crop_size']} px, {result['augment']} augmentation) on {cpus} CPUs, shards {shards}, "
          f"Ray Data's views in {result['views']}:")
    for name, key in (("Ray Data", "raydata"), ("torch DataLoader", "dataloader")):
        print(f"  {name:<17} {result[f'{key}_images_per_s']:>8.1f} images/s ({result[f'{key}_images_per_s_per_cpu']:.1f} "
              f"per CPU), start-up {result[f'{key}_startup_s']:.1f} s")
    print(f"  Ray Data / DataLoader: {result['ratio']:.2f}")
    print(f"MLflow run {result['mlflow_run_id']} ({EXPERIMENT})")


def cpu_name() -> str:
    from tipslab.jobs.bench.step import device_name

    import torch

    return device_name(torch.device("cpu"))


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "GPU (not visible to the driver)"


def trial_run(client, parent_run_id: str):
    """The one trial run of the bench's sweep."""
    [run] = client.search_runs([client.get_run(parent_run_id).info.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return run


def first_report_time(client, run) -> float | None:
    """Wall time (s) of the run's first `train/*` metric, as the sweep's MLflow writer logged it."""
    times = [m.timestamp for key in run.data.metrics if key.startswith("train/")
             for m in client.get_metric_history(run.info.run_id, key)]
    return min(times) / 1000 if times else None


def cmd_bench_trial(args) -> None:
    """A one-trial sweep through the sweeps' own code path (orchestrator/sweep.py); the clock starts
    when the sweep is launched, with Ray already up and the scenes already made, and stops at the
    trial's first `train/*` report as the sweep's MLflow writer received it."""
    from mlflow.tracking import MlflowClient

    from tipslab.jobs.data.pipeline.prepare import ensure_scenes

    from .runtime import ensure_ray
    from .single import single_plan
    from .sweep import run_sweep

    config = args.config or str(default_config(args.size))
    overrides = [f"model.size={args.size}", f"train.steps={args.steps}", "train.log_every=1", *args.overrides]
    plan = single_plan(config, overrides)
    plan = dataclasses.replace(plan, spec={**plan.spec, "name": TRIAL_EXPERIMENT, "title": "tipslab bench trial"})
    exp = plan.trials[0].config
    ensure_scenes(exp)
    ensure_ray(args.address)
    client = MlflowClient(tracking_uri())
    if client.get_experiment_by_name(TRIAL_EXPERIMENT) is None:  # store set up before the clock starts
        client.create_experiment(TRIAL_EXPERIMENT, artifact_location=f"{artifact_root()}/{TRIAL_EXPERIMENT}")
    start = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # Tune prints its tables: stdout is for the figures
        sweep = run_sweep(plan, address=args.address)
    total = time.time() - start
    if sweep.failed:
        raise SystemExit(f"tipslab: bench trial: the trial failed (MLflow parent run {sweep.parent_run_id} "
                         f"in {TRIAL_EXPERIMENT})")
    run = trial_run(client, sweep.parent_run_id)
    first = first_report_time(client, run)
    if first is None:
        raise SystemExit(f"tipslab: bench trial: the trial reported no train/* metric (run {run.info.run_id})")
    gpu = exp["train"]["gpus_per_worker"] > 0
    result = {"model_size": exp["model"]["size"], "steps": exp["train"]["steps"], "device_kind": "gpu" if gpu else "cpu",
              "device": gpu_name() if gpu else cpu_name(),
              "launch_to_first_step_s": first - start, "trial_total_s": total, "sweep_parent_run_id": sweep.parent_run_id,
              # From Tune's start of the trial (the sweep's tracker measures it, where it does).
              "trial_start_to_first_step_s": run.data.metrics.get("perf/launch_to_first_report_s")}
    result["mlflow_run_id"] = log_bench(
        "trial", args.size, result, {k: result[k] for k in ("launch_to_first_step_s", "trial_start_to_first_step_s", "trial_total_s")},
        {"steps": exp["train"]["steps"], "num_workers": exp["train"]["num_workers"], "overrides": " ".join(args.overrides)})
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"one {result['model_size']} trial: {result['launch_to_first_step_s']:.1f} s from launch to its first "
          f"train/* report; {total:.1f} s in all ({result['steps']} steps, then evaluation)")
    print(f"MLflow run {result['mlflow_run_id']} ({EXPERIMENT}); the trial's own runs are in {TRIAL_EXPERIMENT}")


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures and log them to MLflow (tipslab-bench)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH_COMMAND")

    def common(p, sizes: bool = True):
        p.add_argument("overrides", nargs="*", metavar="key=value")
        p.add_argument("--config", help="experiment YAML (default: the base experiment of each size)")
        if sizes:
            p.add_argument("--sizes", nargs="+", default=["tiny"], help="model sizes, e.g. tiny S B L")
        p.add_argument("--json", action="store_true", help="print the results as JSON (stable keys)")

    step = bench_sub.add_parser("step", help="one TIPS training step: images/s, MFU, time per component")
    common(step)
    step.add_argument("--batch-size", type=int, help="per device (default: the config's data.batch_size)")
    step.add_argument("--repeats", type=int, default=3, help="timed bursts and marked steps after warm-up (median)")
    step.add_argument("--burst", type=int, default=0,
                      help="steps back to back per timed burst (default: 10 on cuda, 1 on cpu)")
    step.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when visible")
    step.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                      help="auto: bf16 autocast on cuda, fp32 on cpu")
    step.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                      help="fused AdamW (default: on for cuda)")
    step.add_argument("--compile", action="store_true",
                      help="torch.compile the student and the teacher (no per-component times)")
    step.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    step.add_argument("--write-jobs", metavar="DIR",
                      help="run nothing: write each size's job file to DIR, for infra/bench-step-gpu.sh on a machine "
                           "without MLflow")
    step.add_argument("--import", dest="import_results", nargs="+", metavar="RESULT",
                      help="run nothing: log result files that infra/bench-step-gpu.sh wrote")
    step.set_defaults(func=cmd_bench_step)

    flops = bench_sub.add_parser("flops", help="the analytic FLOP count of one step, by component (no run)")
    common(flops)
    flops.add_argument("--batch-size", type=int, help="per device (default: the config's data.batch_size)")
    flops.add_argument("--world-size", type=int, default=1, help="devices (the contrastive loss's global batch)")
    flops.set_defaults(func=cmd_bench_flops)

    data = bench_sub.add_parser("data", help="the TIPS view pipeline: Ray Data vs a torch DataLoader, images/s")
    data.add_argument("--shards", help="a folder of shards (default: procedural scenes made at --image-size)")
    data.add_argument("--scenes", type=int, default=512, help="how many scenes to make when no --shards is given")
    data.add_argument("--rows", type=int, default=0, help="images to time through each pipeline (0: all)")
    data.add_argument("--cpus", type=int, default=0, help="CPUs for each pipeline (default: the Ray cluster's)")
    data.add_argument("--batch-size", type=int, default=32)
    data.add_argument("--image-size", type=int, default=224, help="the global crop, px")
    data.add_argument("--local-crops", type=int, default=2)
    data.add_argument("--local-crop-size", type=int, default=96)
    data.add_argument("--augment", default="dinov2", help="the views' augmentation (jobs/data/pipeline/views.py)")
    data.add_argument("--mask-mode", default="random", help="random | blockwise")
    data.add_argument("--views", choices=["auto", "actors", "tasks"], default="auto",
                      help="Ray Data's views in an actor pool or in tasks (auto: as training picks for that many rows, "
                           "data.views_actor_rows)")
    data.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    data.add_argument("--json", action="store_true", help="print the result as JSON (stable keys)")
    data.set_defaults(func=cmd_bench_data)

    trial = bench_sub.add_parser("trial", help="the fixed cost of one Tune trial: launch to first step")
    common(trial, sizes=False)
    trial.add_argument("--size", default="tiny")
    trial.add_argument("--steps", type=int, default=2, help="training steps of the trial")
    trial.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    trial.set_defaults(func=cmd_bench_trial)
