"""`tipslab bench`: benchmarks that print figures and log each result to MLflow.

Every result becomes one run of the experiment `tipslab-bench` (tags `tipslab.bench`,
`tipslab.model_size`, `tipslab.device_kind`, `tipslab.device`; metrics `bench/<bench>/*`), where
`tipslab plan` reads them for its estimates. `bench flops` prints the analytic FLOP count
(jobs/bench/flops.py) and logs nothing: it is a function of the config alone; nor does `bench loss`,
a measurement of one function (the plain and the chunked prototype cross-entropy, jobs/bench/loss.py).
The work itself is in orchestrator/bench_runs.py and jobs/bench/; this module parses and prints.
"""

import argparse
import json
from pathlib import Path

from tipslab.jobs.bench import COMPONENTS

from .bench_data_command import add_data_parser
from .bench_loss_command import add_loss_parser
from .bench_runs import (
    import_step_results,
    log_cpu_bench,
    log_step_result,
    measure_trial,
    printed_json,
    run_step_job,
    startup_table,
    step_jobs,
    typed_experiment,
)
from .errors import UserError
from .plan import BENCH_EXPERIMENT as EXPERIMENT


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
    if printed_json(args, results):
        return
    for r in results:
        print(
            f"{r['model_size']}: batch {r['batch_size']} on {r['device_kind']} "
            f"({r['device']}, {r['threads']} threads), "
            f"{r['precision']}{step_settings(r)}"
        )
        print(
            f"  {r['images_per_s']:.1f} images/s, {r['step_s']:.4f} s/step (median of {r['repeats']} bursts of "
            f"{r['burst']} steps)"
        )
        print(
            f"  {r['flops_per_image'] / 1e9:.3f} GFLOP/image; MFU {100 * r['mfu']:.1f}% "
            f"of {r['peak_flops'] / 1e12:.3g} TFLOP/s, {r['peak_source']}"
        )
        if not r["compile"]:
            parts = "  ".join(f"{c} {r[f'{c}_s'] * 1e3:.2f}" for c in COMPONENTS)
            print(f"  per component, ms: {parts}")
            print(f"  components sum to {100 * r['components_over_step']:.0f}% of the step")
        memory = (
            f"peak GPU memory {r['peak_gpu_mem_gb']:.1f} GB"
            if r.get("peak_gpu_mem_gb")
            else f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
        if r.get("student_saved_mb") is not None:
            memory += f", the student's forward keeps {r['student_saved_mb']:.0f} MB for its backward"
        print(f"  {memory}; MLflow run {r['mlflow_run_id']} ({EXPERIMENT})")


def step_settings(r: dict) -> str:
    """The GPU step's settings of a `bench step` result, as its heading names them ("" for none;
    results imported from before they were recorded name compilation only)."""
    settings = [f"compiled ({r.get('compile_mode') or 'default'})"] if r["compile"] else []
    if r.get("activation_checkpointing"):
        settings.append("activation checkpointing")
    if r.get("chunk_rows"):
        settings.append(f"loss chunks of {r['chunk_rows']} rows")
    return "".join(f", {s}" for s in settings)


def cmd_bench_flops(args) -> None:
    from tipslab.jobs.bench.flops import step_flops, step_shape, trainable_params

    rows = []
    for size in args.sizes:
        exp = typed_experiment(args.config, size, args.overrides)
        batch = args.batch_size or exp.data.batch_size
        parts = step_flops(exp, world_size=args.world_size, batch_size=batch)
        shape = step_shape(exp, args.world_size, batch)
        rows.append(
            {
                "model_size": size,
                "batch_size": batch,
                "world_size": args.world_size,
                "image_size": exp.model.image_size,
                "local_crops": shape.local_crops,
                "local_crop_size": exp.data.local_crop_size,
                "captions": shape.captions,
                "masked_patches": shape.masked,
                "student_global_passes": shape.student_global_passes,
                "trainable_params": trainable_params(exp)[0],
                "components": {p.name: {"forward": p.forward / batch, "backward": p.backward / batch} for p in parts},
                "flops_per_image": sum(p.total for p in parts) / batch,
            }
        )
    if printed_json(args, rows):
        return
    for r in rows:
        passes = "masked and clean" if r["student_global_passes"] == 2 else "one"
        print(
            f"{r['model_size']}: {r['image_size']} px global crop ({passes} student passes), "
            f"{r['local_crops']} local crops of {r['local_crop_size']} px, {r['captions']} captions, "
            f"{r['masked_patches']} masked patches; batch {r['batch_size']} x {r['world_size']} devices; "
            f"{r['trainable_params'] / 1e6:.1f} M trainable parameters"
        )
        print(f"  {'GFLOP per image':<22} {'forward':>9} {'backward':>9} {'total':>9}")
        for name, c in r["components"].items():
            print(
                f"  {name:<22} {c['forward'] / 1e9:>9.3f} {c['backward'] / 1e9:>9.3f} "
                f"{(c['forward'] + c['backward']) / 1e9:>9.3f}"
            )
        print(f"  {'total':<22} {'':>9} {'':>9} {r['flops_per_image'] / 1e9:>9.3f}")


def cmd_bench_trial(args) -> None:
    if args.repeats < 1:
        raise UserError(f"--repeats: must be at least 1, got {args.repeats}")
    result = measure_trial(args)
    if printed_json(args, result):
        return
    which = (
        f"one {result['model_size']} trial"
        if result["repeats"] == 1
        else f"the median of {result['repeats']} {result['model_size']} trials"
    )
    print(
        f"{which}: {result['launch_to_first_step_s']:.1f} s from launch to its first "
        f"train/* report; {result['trial_total_s']:.1f} s in all ({result['steps']} steps, then evaluation)"
    )
    print(
        f"Ray's floor (a bare TorchTrainer in a one-trial Tuner, no tipslab code): "
        f"{result['bare_launch_to_first_report_s']:.1f} s to its first report (runs before and after each trial: "
        f"{', '.join(f'{s:.1f}' for s in result['bare_runs_s'])} s); tipslab / floor: {result['ratio_to_bare']:.2f}x"
    )
    if result["repeats"] > 1:
        print(f"  every trial's ratio to its floors: {', '.join(f'{r:.2f}x' for r in sorted(result['ratios']))}")
    print(startup_table(result))
    print(f"MLflow run {result['mlflow_run_id']} ({EXPERIMENT}); the trial's own runs are in tipslab-bench-trial")


def cmd_bench_overhead(args) -> None:
    """What Ray Train costs per step: a 1-worker TorchTrainer against a plain loop (jobs/bench/overhead.py)."""
    from tipslab.jobs.bench.overhead import bench_overhead

    from .meter import ensure_scenes_shown
    from .runtime import ensure_ray, storage_path

    exp = typed_experiment(args.config, None, args.overrides)
    ensure_scenes_shown(exp)
    ensure_ray()
    result = bench_overhead(exp, storage_path(), steps=args.steps, warmup=args.warmup)
    log_cpu_bench(
        "overhead",
        result["model_size"],
        result,
        {k: result[k] for k in ("plain_step_s", "ray_step_s", "ratio")},
        {"steps": args.steps, "warmup": args.warmup, "overrides": " ".join(args.overrides)},
    )
    if printed_json(args, result):
        return
    print(f"plain PyTorch loop: {result['plain_step_s'] * 1000:.1f} ms/step")
    print(f"Ray Train (1 worker): {result['ray_step_s'] * 1000:.1f} ms/step")
    print(
        f"Ray Train / plain: {result['ratio']:.3f} (goal <= 1.05); batch {result['batch_size']}, {args.steps} steps "
        f"after {args.warmup} warm-up, model {result['model_size']}, one thread each"
    )


def cmd_bench_ingest(args) -> None:
    """Ingestion rows/s of each format on the same images (jobs/bench/ingest.py)."""
    from tipslab.jobs.bench.ingest import bench_ingest

    if args.parallel:
        from .runtime import ensure_ray

        ensure_ray()
    result = bench_ingest(n=args.n, size=args.size, tars=args.tars, parallel=args.parallel)
    metrics = {
        f"{fmt.split(',')[0]}{'_ray' if ',' in fmt else ''}_rows_per_s": r["rows_per_s"]
        for fmt, r in result["formats"].items()
    }
    log_cpu_bench("ingest", "none", result, metrics, {"n": args.n, "size": args.size})
    if printed_json(args, result):
        return
    print(f"ingestion of {args.n} JPEGs of {args.size}x{args.size} px:")
    print(f"{'format':<28}{'rows':>6}{'seconds':>9}{'rows/s':>9}")
    for fmt, r in result["formats"].items():
        print(f"{fmt:<28}{r['rows']:>6}{r['seconds']:>9.2f}{r['rows_per_s']:>9.0f}")


def cmd_bench_scenes(args) -> None:
    """Procedural scenes per second on one core (jobs/bench/scenes.py)."""
    from tipslab.jobs.bench.scenes import bench_scenes

    result = bench_scenes(args.size, args.n)
    log_cpu_bench("scenes", "none", result, {k: v for k, v in result.items() if k.endswith("_s")}, {"size": args.size})
    if printed_json(args, result):
        return
    print(
        f"{args.n} scenes of {args.size} px: {result['render_per_cpu_s']:.1f} rendered per CPU-second, "
        f"{result['row_per_cpu_s']:.1f} whole shard rows (with the dense labels encoded) per CPU-second"
    )


def common(p, sizes: bool = True) -> None:
    """The arguments of the benchmarks that build an experiment config."""
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--config", help="experiment YAML (default: the base experiment of each size)")
    if sizes:
        p.add_argument("--sizes", nargs="+", default=["tiny"], help="model sizes, e.g. tiny S B L")
    p.add_argument("--json", action="store_true", help="print the results as JSON (stable keys)")


def add_step_parser(bench_sub) -> None:
    step = bench_sub.add_parser("step", help="one TIPS training step: images/s, MFU, time per component")
    common(step)
    step.add_argument("--batch-size", type=int, help="per device (default: the config's data.batch_size)")
    step.add_argument("--repeats", type=int, default=3, help="timed bursts and marked steps after warm-up (median)")
    step.add_argument(
        "--burst", type=int, default=0, help="steps back to back per timed burst (default: 10 on cuda, 1 on cpu)"
    )
    step.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when visible")
    step.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 autocast on cuda, fp32 on cpu"
    )
    step.add_argument(
        "--fused", action=argparse.BooleanOptionalAction, default=None, help="fused AdamW (default: on for cuda)"
    )
    step.add_argument(
        "--compile", action="store_true", help="torch.compile the student and the teacher (no per-component times)"
    )
    step.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    step.add_argument(
        "--write-jobs",
        metavar="DIR",
        help="run nothing: write each size's job file to DIR, for infra/bench-step-gpu.sh on a machine without MLflow",
    )
    step.add_argument(
        "--import",
        dest="import_results",
        nargs="+",
        metavar="RESULT",
        help="run nothing: log result files that infra/bench-step-gpu.sh wrote",
    )
    step.set_defaults(func=cmd_bench_step)


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures and log them to MLflow (tipslab-bench)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH_COMMAND")
    add_step_parser(bench_sub)
    flops = bench_sub.add_parser("flops", help="the analytic FLOP count of one step, by component (no run)")
    common(flops)
    flops.add_argument("--batch-size", type=int, help="per device (default: the config's data.batch_size)")
    flops.add_argument("--world-size", type=int, default=1, help="devices (the contrastive loss's global batch)")
    flops.set_defaults(func=cmd_bench_flops)
    add_loss_parser(bench_sub)

    add_data_parser(bench_sub)
    add_run_parsers(bench_sub)


def add_run_parsers(bench_sub) -> None:
    """The benchmarks of whole runs: a trial's fixed cost, Ray Train's per-step cost, ingestion, scenes."""
    trial = bench_sub.add_parser("trial", help="the fixed cost of one Tune trial: launch to first step")
    common(trial, sizes=False)
    trial.add_argument("--size", default="tiny")
    trial.add_argument("--steps", type=int, default=2, help="training steps of the trial")
    trial.add_argument(
        "--repeats", type=int, default=1, help="trials, each between two floors; the median ratio is reported"
    )
    trial.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    trial.set_defaults(func=cmd_bench_trial)

    overhead = bench_sub.add_parser("overhead", help="Ray Train's cost per step: a 1-worker trainer vs a plain loop")
    common(overhead, sizes=False)
    overhead.add_argument("--steps", type=int, default=30, help="timed steps on each side")
    overhead.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    overhead.set_defaults(func=cmd_bench_overhead)

    ingest = bench_sub.add_parser("ingest", help="ingestion rows/s of each source format on the same images")
    ingest.add_argument("--n", type=int, default=300, help="images per format")
    ingest.add_argument("--size", type=int, default=224, help="image side, px")
    ingest.add_argument("--tars", type=int, default=4, help="tars the WebDataset images are split into")
    ingest.add_argument("--parallel", action="store_true", help="also one Ray task per tar")
    ingest.add_argument("--json", action="store_true", help="print the result as JSON (stable keys)")
    ingest.set_defaults(func=cmd_bench_ingest)

    scenes = bench_sub.add_parser("scenes", help="procedural scenes per second on one core")
    scenes.add_argument("--n", type=int, default=100, help="scenes to render")
    scenes.add_argument("--size", type=int, default=224, help="image side, px")
    scenes.add_argument("--json", action="store_true", help="print the result as JSON (stable keys)")
    scenes.set_defaults(func=cmd_bench_scenes)
