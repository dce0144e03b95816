"""`tipslab plan`: what a sweep would run, on what, and for how long, without running anything.

The estimate comes from bench results in MLflow (experiment `tipslab-bench`, written by `tipslab
bench`): the latest step benchmark of the same model size on the same kind of device, at the same
batch size per worker and the same compile setting as the trial, gives images/s per worker (a
benchmark at another setting is never used: without a match the estimate is unknown); the latest
trial benchmark gives the fixed cost of a trial (launch to first step). Training time scales as
steps x per-worker batch / per-worker images/s (data parallel, assumed linear); evaluation time is
not included. Without a matching bench result the plan says so.

The data side: the latest `tipslab bench data` result for the trial's views (global crop size,
number and size of local crops; the same augmentation, or DINOv2's, which costs at least as much)
gives the views' images/s per CPU. The trial's `data.cpus` make data.cpus x that rate; when the
workers consume more (workers x images/s per worker), the plan warns with both numbers and the
CPUs needed, and estimates at the rate the data can keep up with.

GPU trials are summed in GPU-hours; CPU trials (the mini and smoke sizes) in trial-minutes and
CPU-hours (the CPUs a trial holds: its workers' and Ray Data's), read from CPU bench results only.
"""

import math
from dataclasses import dataclass

BENCH_EXPERIMENT = "tipslab-bench"
BENCH, MODEL_SIZE, DEVICE_KIND = "tipslab.bench", "tipslab.model_size", "tipslab.device_kind"
IMAGES_PER_S, LAUNCH_S = "bench/step/images_per_s", "bench/trial/launch_to_first_step_s"
VIEWS_PER_CPU = "bench/data/raydata_images_per_s_per_cpu"
# A data bench's views, as `tipslab bench data` logs them: metric bench/data/<name> -> config key.
VIEW_KEYS = {"image_size": ("model", "image_size"), "local_crops": ("data", "local_crops")}
VIEW_KEYS["local_crop_size"] = ("data", "local_crop_size")


@dataclass(frozen=True)
class Setting:
    """What a step benchmark must share with a trial for its images/s to apply."""

    model_size: str
    device_kind: str  # cpu | gpu
    batch_size: int  # per worker
    compile: bool

    @classmethod
    def of(cls, config: dict, device_kind: str) -> "Setting":
        return cls(config["model"]["size"], device_kind, config["data"]["batch_size"], bool(config["train"]["compile"]))

    def words(self) -> str:
        return f"{self.model_size} on {self.device_kind} at batch {self.batch_size} per worker, " + (
            "compiled" if self.compile else "eager"
        )


@dataclass
class Estimate:
    model_size: str
    device_kind: str  # cpu | gpu
    batch_size: int = 0
    compile: bool = False
    images_per_s: float | None = None  # per worker (device)
    launch_s: float | None = None
    threads: int | None = None  # CPU: the torch threads the step benchmark ran with
    step_run: str | None = None  # the bench runs the figures come from
    trial_run: str | None = None
    note: str = ""


def finished_bench_runs(client, experiment_id: str, kind: str, tags: dict, metric: str) -> list:
    """The FINISHED bench runs of `kind` with these tags and the metric, newest first."""
    wanted = [f"tags.`{BENCH}` = '{kind}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())]
    query = " and ".join([*wanted, "attributes.status = 'FINISHED'"])
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=200)
    return [r for r in runs if metric in r.data.metrics]


def latest_bench(client, experiment_id: str, kind: str, size: str, device_kind: str, metric: str):
    found = finished_bench_runs(client, experiment_id, kind, {MODEL_SIZE: size, DEVICE_KIND: device_kind}, metric)
    return found[0] if found else None


def step_matches(run, setting: Setting) -> bool:
    params = run.data.params
    return params.get("batch_size") == str(setting.batch_size) and params.get("compile") == str(setting.compile)


def step_setting(run) -> str:
    p = run.data.params
    return f"batch {p.get('batch_size', '?')}, " + ("compiled" if p.get("compile") == "True" else "eager")


def bench_estimate(tracking_uri: str, setting: Setting) -> Estimate:
    from tipslab.dashboards.store import StoreError, client_for

    size, device_kind = setting.model_size, setting.device_kind
    est = Estimate(size, device_kind, setting.batch_size, setting.compile)
    try:
        client = client_for(tracking_uri)
    except StoreError:
        est.note = f"no MLflow store at {tracking_uri}, so no bench results"
        return est
    exp = client.get_experiment_by_name(BENCH_EXPERIMENT)
    tags = {MODEL_SIZE: size, DEVICE_KIND: device_kind}
    steps = finished_bench_runs(client, exp.experiment_id, "step", tags, IMAGES_PER_S) if exp else []
    step = next((r for r in steps if step_matches(r, setting)), None)
    trial = latest_bench(client, exp.experiment_id, "trial", size, device_kind, LAUNCH_S) if exp else None
    if step is None:
        how = f"tipslab bench step --sizes {size} --batch-size {setting.batch_size}" + (
            " --compile" if setting.compile else ""
        )
        how += " --device cpu" if device_kind == "cpu" else ""
        others = sorted({step_setting(r) for r in steps})
        est.note = (
            f"no bench result for model size {setting.words()} in MLflow experiment {BENCH_EXPERIMENT!r}"
            + (f" (only at {'; '.join(others)}, which is not this trial's setting)" if others else "")
            + f": run `{how}` on that hardware for an estimate"
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


@dataclass
class Views:
    """The views' rate per CPU from a data bench, or why there is none."""

    images_per_s_per_cpu: float | None = None
    run: str | None = None
    device: str = ""
    note: str = ""


def view_setting(config: dict) -> dict:
    """The settings of a trial's views that a data bench must share (`tipslab bench data` flags)."""
    out = {name: config[section][key] for name, (section, key) in VIEW_KEYS.items()}
    return {**out, "augment": config["data"]["augment"]}


def views_matches(run, views: dict) -> bool:
    metrics = run.data.metrics
    same = all(metrics.get(f"bench/data/{k}") == float(views[k]) for k in VIEW_KEYS)
    # DINOv2's augmentations cost at least what no augmentation does: a conservative stand-in.
    return same and run.data.params.get("augment") in (views["augment"], "dinov2")


def views_estimate(tracking_uri: str, config: dict) -> Views:
    from tipslab.dashboards.store import StoreError, client_for

    views = view_setting(config)
    how = (
        f"tipslab bench data --image-size {views['image_size']} --local-crops {views['local_crops']} "
        f"--local-crop-size {views['local_crop_size']} --augment {views['augment']}"
    )
    try:
        client = client_for(tracking_uri)
    except StoreError:
        return Views(note=f"no MLflow store at {tracking_uri}, so no data bench result")
    exp = client.get_experiment_by_name(BENCH_EXPERIMENT)
    runs = finished_bench_runs(client, exp.experiment_id, "data", {}, VIEWS_PER_CPU) if exp else []
    run = next((r for r in runs if views_matches(r, views)), None)
    if run is None:
        return Views(
            note=f"no data bench result for these views ({views['image_size']} px, {views['local_crops']} local "
            f"crops of {views['local_crop_size']} px, augment {views['augment']}): whether data.cpus="
            f"{config['data']['cpus']:g} can feed the workers is unknown; run `{how}` on a node like the cluster's"
        )
    return Views(run.data.metrics[VIEWS_PER_CPU], run.info.run_id, run.data.tags.get("tipslab.device", ""))


def feed_check(config: dict, est: Estimate, views: Views) -> dict:
    """Whether the trial's data.cpus can make views as fast as its workers consume them."""
    workers, cpus = config["train"]["num_workers"], config["data"]["cpus"]
    out = {"data_cpus": cpus, "views_images_per_s_per_cpu": views.images_per_s_per_cpu, "data_run": views.run}
    out.update(consumed_images_per_s=None, supplied_images_per_s=None, needed_cpus=None, feeds=None, warning="")
    if views.images_per_s_per_cpu is None:
        if config["train"]["gpus_per_worker"] > 0 and cpus < workers:  # no figure needed to see this
            out["feeds"] = False
            out["warning"] = (
                f"data.cpus={cpus:g} CPU(s) of Ray Data for {workers} GPU workers (fewer than one a GPU): "
                "the GPUs will wait on the views; size data.cpus with `tipslab bench data`"
            )
        return out
    supplied = cpus * views.images_per_s_per_cpu
    out["supplied_images_per_s"] = supplied
    if est.images_per_s is None:
        return out
    consumed = workers * est.images_per_s
    needed = math.ceil(consumed / views.images_per_s_per_cpu)
    out.update(consumed_images_per_s=consumed, needed_cpus=needed, feeds=supplied >= consumed)
    if supplied < consumed:
        out["warning"] = (
            f"data.cpus={cpus:g} cannot feed the workers: {cpus:g} CPU(s) x {views.images_per_s_per_cpu:.1f} "
            f"images/s of views per CPU (bench run {views.run}) = {supplied:.0f} images/s, but {workers} "
            f"worker(s) x {est.images_per_s:.1f} images/s (bench run {est.step_run}) = {consumed:.0f} images/s: "
            f"set data.cpus to at least {needed} (the estimate below runs at the data's rate)"
        )
    return out


def trial_row(t, est: "Estimate", feed: dict | None = None) -> dict:
    """One trial of the plan with its estimated hours (None without a matching bench result); at the
    data's rate where the views cannot keep up with the workers."""
    train, data = t.config["train"], t.config["data"]
    hours, rate = None, est.images_per_s
    if feed and feed.get("feeds") is False and feed.get("supplied_images_per_s"):
        rate = feed["supplied_images_per_s"] / train["num_workers"]
    if rate:
        hours = (train["steps"] * data["batch_size"] / rate + (est.launch_s or 0.0)) / 3600
    return {
        "name": t.name,
        "variant": t.variant,
        "seed": t.seed,
        "config_hash": t.config_hash,
        "model_size": t.config["model"]["size"],
        "steps": train["steps"],
        "batch_size_per_worker": data["batch_size"],
        "compile": bool(train["compile"]),
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
        "batch_size_per_worker": e.batch_size,
        "compile": e.compile,
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
    estimates: dict[Setting, Estimate] = {}
    feeds: dict[tuple, dict] = {}
    views: dict[tuple, Views] = {}
    trials = []
    for t in plan.trials:
        setting = Setting.of(t.config, device_kind)
        if setting not in estimates:
            estimates[setting] = bench_estimate(tracking_uri, setting)
        est = estimates[setting]
        vkey = tuple(view_setting(t.config).values())
        if vkey not in views:
            views[vkey] = views_estimate(tracking_uri, t.config)
        fkey = (setting, vkey, t.config["data"]["cpus"], t.config["train"]["num_workers"])
        if fkey not in feeds:
            feeds[fkey] = feed_check(t.config, est, views[vkey])
        feed = feeds[fkey]
        trials.append(trial_row(t, est, feed))
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
        "data": {
            "feeds": list(feeds.values()),
            "notes": list(dict.fromkeys(v.note for v in views.values() if v.note)),
        },
        "warnings": list(dict.fromkeys(f["warning"] for f in feeds.values() if f["warning"])),
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
                f"basis: {b['model_size']} on {b['device_kind']} at batch {b['batch_size_per_worker']}, "
                f"{'compiled' if b['compile'] else 'eager'}: {b['images_per_s']:.1f} images/s per worker "
                f"(bench run {b['step_run']})"
                + (
                    f", {b['launch_to_first_step_s']:.1f} s launch to first step"
                    if b["launch_to_first_step_s"] is not None
                    else ""
                )
            )
        if b["note"]:
            lines.append(f"note: {b['note']}")
    for f in summary["data"]["feeds"]:
        if f["feeds"]:
            lines.append(
                f"data: {f['data_cpus']:g} CPU(s) x {f['views_images_per_s_per_cpu']:.1f} images/s of views per CPU "
                f"(bench run {f['data_run']}) feed the {f['consumed_images_per_s']:.0f} images/s the workers take"
            )
    lines += [f"note: {n}" for n in summary["data"]["notes"]]
    lines += [f"WARNING: {w}" for w in summary["warnings"]]
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
