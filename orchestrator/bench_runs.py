"""The work behind `tipslab bench` (orchestrator/bench_commands.py prints it): step jobs in processes
of their own, imported results, and the one-trial sweep of `bench trial`; every result is logged to
the `tipslab-bench` experiment (orchestrator/tracking.py), where `tipslab plan` reads it."""

import contextlib
import dataclasses
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from tipslab.jobs.bench import COMPONENTS
from tipslab.jobs.config import ExperimentConfig
from tipslab.jobs.config import experiment as typed_config

from .config import load_experiment, to_dict
from .errors import CommandFailed, UserError
from .launch import CPU_SIZES
from .runtime import tracking_uri

TRIAL_EXPERIMENT = "tipslab-bench-trial"  # the sweep runs that `bench trial` launches, kept apart
BASE = Path(__file__).resolve().parent.parent / "ablations" / "base"


def default_config(size: str) -> Path:
    """The base experiment of a size: the tiny CPU experiment for our CPU sizes, else the paper's
    B/14 setting (224 px, 8 local crops of 98 px, both captions) with the size swapped."""
    return BASE / ("tips_tiny.yaml" if size in CPU_SIZES else "tips_b14.yaml")


def experiment(config: str | None, size: str | None, overrides: list[str]) -> dict:
    """The experiment of a benchmark as a plain dict (it travels as JSON to `tipslab bench step`'s
    subprocess and into MLflow)."""
    return to_dict(load_bench_experiment(config, size, overrides))


def typed_experiment(config: str | None, size: str | None, overrides: list[str]) -> ExperimentConfig:
    """The experiment of a benchmark, typed, for the jobs that run in this process."""
    return typed_config(load_bench_experiment(config, size, overrides))


def load_bench_experiment(config: str | None, size: str | None, overrides: list[str]):
    sized = [f"model.size={size}"] if size else []
    path = config or default_config(size or "tiny")
    return load_experiment(path, [*sized, *overrides])


def log_bench(bench: str, model_size: str, result: dict, metrics: dict, params: dict) -> str:
    from .tracking_outside import log_bench as log

    return log(tracking_uri(), bench, model_size, result, metrics, params)


def log_cpu_bench(bench: str, model_size: str, result: dict, metrics: dict, params: dict) -> None:
    """A benchmark that ran on this machine's CPUs: its device named in `result`, its run logged
    (`result["mlflow_run_id"]`)."""
    result.update(device_kind="cpu", device=device())
    result["mlflow_run_id"] = log_bench(bench, model_size, result, metrics, params)


def device(gpu: bool = False) -> str:
    """The name of this machine's CPU, or of its GPU (jobs/bench/device.py names both)."""
    import torch

    from tipslab.jobs.bench.device import device_name

    if gpu and not torch.cuda.is_available():
        return "GPU (not visible to the driver)"
    return device_name(torch.device("cuda" if gpu else "cpu"))


def run_step_job(job: dict) -> dict:
    """One size in a fresh process, so that each peak memory figure is its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "tipslab.jobs.bench.step", json.dumps(job)], capture_output=True, text=True
    )
    if proc.returncode:
        raise CommandFailed(f"bench step failed for size {job['exp']['model']['size']}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def log_step_result(result: dict, exp: dict | None, overrides: str) -> str:
    """Log one step benchmark result to `tipslab-bench`; returns the MLflow run id."""
    metrics = {
        k: result.get(k)
        for k in (
            "images_per_s",
            "mfu",
            "step_s",
            "flops_per_image",
            "peak_flops",
            "components_over_step",
            "peak_gpu_mem_gb",
            "student_saved_mb",
        )
    }
    if not result["compile"]:
        metrics.update({f"{c}_s": result[f"{c}_s"] for c in COMPONENTS})
    params = {
        k: result[k]
        for k in ("batch_size", "threads", "precision", "fused_adamw", "compile", "repeats", "burst", "peak_source")
    }
    # the GPU step's settings (results imported from before they were recorded have none)
    params.update({k: result[k] for k in ("compile_mode", "activation_checkpointing", "chunk_rows") if k in result})
    params["overrides"] = overrides
    return log_bench("step", result["model_size"], {**result, "config": exp}, metrics, params)


def step_jobs(args) -> list[dict]:
    jobs = []
    for size in args.sizes:
        exp = experiment(args.config, size, args.overrides)
        jobs.append(
            {
                "exp": exp,
                "batch_size": args.batch_size or exp["data"]["batch_size"],
                "repeats": args.repeats,
                "device": args.device,
                "precision": args.precision,
                "fused": args.fused,
                "compile": args.compile,
                "burst": args.burst or None,
                "threads": args.threads,
            }
        )
    return jobs


def import_step_results(paths: list[str]) -> list[dict]:
    """Results that `python -m tipslab.jobs.bench.step JOB` printed on a machine without MLflow (a GPU
    node, say: infra/bench-step-gpu.sh), logged here as if `bench step` had run them."""
    results = []
    for path in paths:
        try:
            lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
            result = json.loads(lines[-1])
            missing = [
                k
                for k in (
                    "model_size",
                    "device_kind",
                    "device",
                    "images_per_s",
                    "mfu",
                    "step_s",
                    "compile",
                    "batch_size",
                )
                if k not in result
            ]
        except (OSError, IndexError, ValueError) as err:
            raise UserError(f"bench step --import {path}: not a step benchmark result ({err})") from None
        if missing:
            raise UserError(f"bench step --import {path}: not a step benchmark result (no {', '.join(missing)})")
        results.append(result)
    for path, result in zip(paths, results):
        result["mlflow_run_id"] = log_step_result(result, None, f"imported from {path}")
    return results


def trial_run(client, parent_run_id: str):
    """The one trial run of the bench's sweep."""
    [run] = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    return run


def first_report_time(client, run) -> float | None:
    """Wall time (s) of the run's first `train/*` metric, as the sweep's MLflow writer logged it."""
    times = [
        m.timestamp
        for key in run.data.metrics
        if key.startswith("train/")
        for m in client.get_metric_history(run.info.run_id, key)
    ]
    return min(times) / 1000 if times else None


def startup_phases(metrics: dict) -> dict:
    """{phase: seconds} of the `perf/startup/<phase>_s` metrics (jobs/train/startup.py)."""
    prefix, suffix = "perf/startup/", "_s"
    return {k[len(prefix) : -len(suffix)]: v for k, v in metrics.items() if k.startswith(prefix) and k.endswith(suffix)}


STARTUP_PHASES = {  # jobs/train/startup.py
    "workers": "launch to the worker's process (Ray Train's controller, the worker group)",
    "worker_setup": "process to the training function (Ray's set-up, the loop's imports)",
    "model": "data started, model stack imported, model, teacher and optimizer built",
    "first_batch": "first batch in hand (Ray Data's start-up, less its overlap with the model)",
    "first_step": "to the first report (train.log_every steps: 1 here)",
}


def startup_table(result: dict) -> str:
    """The training worker's start-up, phase by phase, beside the bare floor's worker."""
    rows = [("phase", "tipslab s", "floor s", "")]
    for phase, what in STARTUP_PHASES.items():
        ours, bare = result["phases"].get(phase), result["bare_phases"].get(phase)
        if ours is None and bare is None:
            continue
        rows.append((phase, "-" if ours is None else f"{ours:.1f}", "-" if bare is None else f"{bare:.1f}", what))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in rows)


def median_index(values: list[float]) -> int:
    """The index of the median of `values` (of an even number, the upper of the middle two)."""
    return sorted(range(len(values)), key=lambda i: values[i])[len(values) // 2]


def measure_trial(args) -> dict:
    """A one-trial sweep through the sweeps' own code path (orchestrator/sweep.py), `args.repeats`
    times, each between two runs of Ray's floor; the clock starts when the sweep is launched, with
    Ray already up and the scenes already made, and stops at the trial's first `train/*` report as
    the sweep's MLflow writer received it. The result is the repeat of median ratio to its floors
    (all the ratios beside it): on a shared machine one run's ratio swings by a tenth or more."""
    from mlflow.tracking import MlflowClient

    from tipslab.jobs.bench.floor import bare_trial_floor

    from .meter import ensure_scenes_shown
    from .run_tags import experiment_id
    from .runtime import ensure_ray, storage_path
    from .single import single_plan
    from .sweep import DRIVER_RESOURCES, run_sweep

    config = args.config or str(default_config(args.size))
    # The hash tokenizer at every size (a timing does not depend on the vocabulary, and a bench needs no
    # prepared data), unless the overrides name a tokenizer.model.
    overrides = [
        f"model.size={args.size}",
        f"train.steps={args.steps}",
        "train.log_every=1",
        "model.tokenizer=hash",
        *args.overrides,
    ]
    plan = single_plan(config, overrides)
    plan = dataclasses.replace(plan, spec={**plan.spec, "name": TRIAL_EXPERIMENT, "title": "tipslab bench trial"})
    exp = typed_config(plan.trials[0].config)
    ensure_scenes_shown(exp)
    ensure_ray(args.address)
    client = MlflowClient(tracking_uri())
    experiment_id(client, TRIAL_EXPERIMENT)  # the store set up before the clock starts
    floor = partial(bare_trial_floor, storage_path(), DRIVER_RESOURCES, exp.train.cpus_per_worker)
    floors, trials = [], []
    with contextlib.redirect_stdout(sys.stderr):  # Tune prints its tables: stdout is for the figures
        floors.append(floor())
        for _ in range(args.repeats):  # each trial between two floors: the machine's drift is shared
            start = time.time()
            sweep = run_sweep(plan, address=args.address)
            total = time.time() - start
            floors.append(floor())
            if sweep.failed:
                raise CommandFailed(
                    f"bench trial: the trial failed (MLflow parent run {sweep.parent_run_id} in {TRIAL_EXPERIMENT})"
                )
            run = trial_run(client, sweep.parent_run_id)
            first = first_report_time(client, run)
            if first is None:
                raise CommandFailed(f"bench trial: the trial reported no train/* metric (run {run.info.run_id})")
            bare = sum(f["launch_to_first_report_s"] for f in floors[-2:]) / 2
            trials.append({"first_s": first - start, "total_s": total, "bare_s": bare, "sweep": sweep, "run": run})
    ratios = [t["first_s"] / t["bare_s"] for t in trials]
    median = trials[median_index(ratios)]  # the repeat that speaks for the run
    gpu = exp.train.gpus_per_worker > 0
    result = {
        "model_size": exp.model.size,
        "steps": exp.train.steps,
        "device_kind": "gpu" if gpu else "cpu",
        "device": device(gpu),
        "repeats": len(trials),
        "launch_to_first_step_s": median["first_s"],
        "trial_total_s": median["total_s"],
        # Ray's floor: a bare TorchTrainer in a one-trial Tuner (jobs/bench/floor.py), before and after
        # each trial; the median repeat's two.
        "bare_launch_to_first_report_s": median["bare_s"],
        "bare_runs_s": [round(f["launch_to_first_report_s"], 2) for f in floors],
        "ratios": [round(r, 3) for r in ratios],
        "sweep_parent_run_id": median["sweep"].parent_run_id,
        # From Tune's start of the trial (the sweep's tracker measures it, where it does).
        "trial_start_to_first_step_s": median["run"].data.metrics.get("perf/launch_to_first_report_s"),
        # The worker's start-up phases (jobs/train/startup.py), tipslab's and the floor's (mean).
        "phases": startup_phases(median["run"].data.metrics),
        "bare_phases": {
            k: sum(startup_phases(f["phases"])[k] for f in floors) / len(floors)
            for k in startup_phases(floors[0]["phases"])
        },
    }
    result["ratio_to_bare"] = result["launch_to_first_step_s"] / result["bare_launch_to_first_report_s"]
    result["mlflow_run_id"] = log_bench(
        "trial",
        args.size,
        result,
        {
            k: result[k]
            for k in ("launch_to_first_step_s", "trial_start_to_first_step_s", "trial_total_s", "ratio_to_bare")
        },
        {"steps": exp.train.steps, "num_workers": exp.train.num_workers, "overrides": " ".join(args.overrides)},
    )
    return result


def printed_json(args, result) -> bool:
    """With --json, the result as JSON (stable keys) on stdout, and nothing else."""
    if args.json:
        print(json.dumps(result, indent=2))
    return args.json
