"""`tipslab plan`: what a sweep would run, on what, and for how long, without running anything.

The estimate comes from bench results in MLflow (experiment `tipslab-bench`, written by `tipslab
bench`): the latest step benchmark of the same model size on the same kind of device gives images/s
per worker, and the latest trial benchmark gives the fixed cost of a trial (launch to first step).
Training time scales as steps x per-worker batch / per-worker images/s (data parallel, assumed
linear); evaluation time is not included. Without a matching bench result the plan says so.

GPU trials are summed in GPU-hours; CPU trials (the mini and smoke sizes) in trial-minutes and
CPU-hours (the CPUs a trial holds: its workers' and Ray Data's), read from CPU bench results only.
"""

from dataclasses import dataclass

BENCH_EXPERIMENT = "tipslab-bench"
BENCH, MODEL_SIZE, DEVICE_KIND = "tipslab.bench", "tipslab.model_size", "tipslab.device_kind"
IMAGES_PER_S, LAUNCH_S = "bench/step/images_per_s", "bench/trial/launch_to_first_step_s"


@dataclass
class Estimate:
    model_size: str
    device_kind: str  # cpu | gpu
    images_per_s: float | None = None  # per worker (device)
    launch_s: float | None = None
    threads: int | None = None  # CPU: the torch threads the step benchmark ran with
    step_run: str | None = None  # the bench runs the figures come from
    trial_run: str | None = None
    note: str = ""


def latest_bench(client, experiment_id: str, kind: str, size: str, device_kind: str, metric: str):
    query = (
        f"tags.`{BENCH}` = '{kind}' and tags.`{MODEL_SIZE}` = '{size}' and tags.`{DEVICE_KIND}` = '{device_kind}'"
        f" and attributes.status = 'FINISHED'"
    )
    for run in client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=20):
        if metric in run.data.metrics:
            return run
    return None


def bench_estimate(tracking_uri: str, size: str, device_kind: str) -> Estimate:
    from tipslab.dashboards.store import StoreError, client_for

    est = Estimate(size, device_kind)
    try:
        client = client_for(tracking_uri)
    except StoreError:
        est.note = f"no MLflow store at {tracking_uri}, so no bench results"
        return est
    exp = client.get_experiment_by_name(BENCH_EXPERIMENT)
    step = latest_bench(client, exp.experiment_id, "step", size, device_kind, IMAGES_PER_S) if exp else None
    trial = latest_bench(client, exp.experiment_id, "trial", size, device_kind, LAUNCH_S) if exp else None
    if step is None:
        how = f"tipslab bench step --sizes {size}" + (" --device cpu" if device_kind == "cpu" else "")
        est.note = (
            f"no bench result for model size {size} on {device_kind} in MLflow experiment "
            f"{BENCH_EXPERIMENT!r}: run `{how}` on that hardware for an estimate"
        )
        return est
    est.images_per_s, est.step_run = step.data.metrics[IMAGES_PER_S], step.info.run_id
    threads = step.data.params.get("threads", "")
    est.threads = int(threads) if threads.isdigit() else None
    if trial is not None:
        est.launch_s, est.trial_run = trial.data.metrics[LAUNCH_S], trial.info.run_id
    else:
        est.note = "no trial bench result (`tipslab bench trial`): the fixed cost of each trial is left out"
    return est


def trial_row(t, est: "Estimate") -> dict:
    """One trial of the plan with its estimated hours (None without a matching bench result)."""
    train, data = t.config["train"], t.config["data"]
    hours = None
    if est.images_per_s:
        hours = (train["steps"] * data["batch_size"] / est.images_per_s + (est.launch_s or 0.0)) / 3600
    return {
        "name": t.name,
        "variant": t.variant,
        "seed": t.seed,
        "config_hash": t.config_hash,
        "model_size": t.config["model"]["size"],
        "steps": train["steps"],
        "batch_size_per_worker": data["batch_size"],
        "hours": hours,
    }


def note_threads(estimates: dict, cpus_per_worker: float) -> None:
    """On CPU, say where the step bench ran with another thread count than a trial's worker has."""
    for e in estimates.values():
        if e.threads and e.threads != cpus_per_worker:
            why = (
                f"the step bench ran with {e.threads} torch threads, a trial's worker has "
                f"{cpus_per_worker:g} CPU(s): the trial may run at a different speed"
            )
            e.note = "; ".join(filter(None, [e.note, why]))


def basis(e: "Estimate") -> dict:
    return {
        "model_size": e.model_size,
        "device_kind": e.device_kind,
        "images_per_s": e.images_per_s,
        "launch_to_first_step_s": e.launch_s,
        "step_run": e.step_run,
        "trial_run": e.trial_run,
        "note": e.note,
    }


def plan_summary(plan, tracking_uri: str) -> dict:
    """The stable `--json` form of a plan."""
    config = plan.trials[0].config
    train = config["train"]
    device_kind = "gpu" if train["gpus_per_worker"] > 0 else "cpu"
    cpus_per_trial = train["num_workers"] * train["cpus_per_worker"] + config["data"]["cpus"]
    estimates: dict[str, Estimate] = {}
    trials = []
    for t in plan.trials:
        size = t.config["model"]["size"]
        trials.append(trial_row(t, estimates.setdefault(size, bench_estimate(tracking_uri, size, device_kind))))
    count = plan.search.num_samples if plan.sampled else len(trials)
    if plan.sampled:  # every sample costs what the starting point costs
        trials = [
            dict(trials[0], name=f"{plan.search.algorithm} sample {i + 1}", config_hash=None) for i in range(count)
        ]
    known = [t["hours"] for t in trials if t["hours"] is not None]
    gpus_per_trial = train["num_workers"] * train["gpus_per_worker"]
    trial_hours = sum(known) if len(known) == len(trials) else None
    if device_kind == "cpu":
        note_threads(estimates, train["cpus_per_worker"])
    resources = {
        "workers_per_trial": train["num_workers"],
        "gpus_per_worker": train["gpus_per_worker"],
        "cpus_per_worker": train["cpus_per_worker"],
        "data_cpus": config["data"]["cpus"],
        "gpus_per_trial": gpus_per_trial,
        "cpus_per_trial": cpus_per_trial,
        "device_kind": device_kind,
        "max_concurrent_trials": plan.resources.max_concurrent_trials,
    }
    return {
        "spec": plan.spec["name"],
        "size": plan.size,
        "trials": trials,
        "num_trials": count,
        "resources": resources,
        "estimate": {
            "trial_hours": trial_hours,
            "gpu_hours": trial_hours * gpus_per_trial if trial_hours is not None else None,
            "cpu_hours": trial_hours * cpus_per_trial if trial_hours is not None else None,
            "basis": [basis(e) for e in estimates.values()],
            "excludes": "evaluation time",
        },
    }


def format_plan(summary: dict) -> str:
    r = summary["resources"]
    cpu = r["device_kind"] == "cpu"  # CPU trials take minutes: shown in minutes, summed in CPU-hours
    unit, scale = ("minutes", 60) if cpu else ("hours", 1)
    lines = [
        f"plan of {summary['spec']} ({summary['size']}): {summary['num_trials']} trial(s), each "
        f"{r['workers_per_trial']} worker(s) x ({r['cpus_per_worker']:g} CPU, {r['gpus_per_worker']:g} GPU)"
        f" + {r['data_cpus']:g} CPU for Ray Data",
        f"{'trial':<40} {'model':>9} {'steps':>7} {'batch/worker':>12} {unit:>8}",
    ]
    for t in summary["trials"]:
        time = "?" if t["hours"] is None else f"{t['hours'] * scale:.{1 if cpu else 3}f}"
        lines.append(f"{t['name']:<40} {t['model_size']:>9} {t['steps']:>7} {t['batch_size_per_worker']:>12} {time:>8}")
    est = summary["estimate"]
    for b in est["basis"]:
        if b["images_per_s"]:
            lines.append(
                f"basis: {b['model_size']} on {b['device_kind']}: {b['images_per_s']:.1f} images/s per worker "
                f"(bench run {b['step_run']})"
                + (
                    f", {b['launch_to_first_step_s']:.1f} s launch to first step"
                    if b["launch_to_first_step_s"] is not None
                    else ""
                )
            )
        if b["note"]:
            lines.append(f"note: {b['note']}")
    if est["trial_hours"] is None:
        lines.append("estimate: unknown (no matching bench results)")
    elif cpu:
        lines.append(
            f"estimate: {est['trial_hours'] * 60:.1f} trial-minutes ({est['trial_hours']:.2f} h), "
            f"{est['cpu_hours']:.2f} CPU-hours at {r['cpus_per_trial']:g} CPUs per trial, no GPU "
            f"(training only; evaluation not included)"
        )
    else:
        lines.append(
            f"estimate: {est['trial_hours']:.3f} trial-hours, {est['gpu_hours']:.3f} GPU-hours "
            f"(training only; evaluation not included)"
        )
    return "\n".join(lines)
