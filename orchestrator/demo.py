"""Where `tipslab demo`'s time went: the driver's own steps (Ray's start-up, the scenes), then per
trial its start-up, training and evaluation (from the trial's MLflow run: its start and end, the
times of its `train/*` reports), the table; and the trainer's images/s beside `tipslab bench
step`'s for the same model, batch and threads, measured right after.

A trial's first report comes `train.log_every` steps into training: its start-up is the time to
that report less those steps at the trial's own step rate."""

import statistics
from dataclasses import dataclass

from mlflow.tracking import MlflowClient


@dataclass
class TrialTime:
    name: str
    startup_s: float
    training_s: float
    evaluation_s: float
    images_per_s: float | None  # the trainer's, over the reports after the first
    batch_size: int
    threads: int


def trial_times(client: MlflowClient, parent_run_id: str, experiment_id: str) -> list[TrialTime]:
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000)
    out = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        if run.info.status != "FINISHED":
            continue
        loss = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
        if not loss:
            continue
        params = run.data.params
        every, steps = int(params.get("train.log_every", 1)), loss[-1].step
        first, last = loss[0].timestamp / 1000, loss[-1].timestamp / 1000
        per_step = (last - first) / max(1, steps - loss[0].step)
        start, end = run.info.start_time / 1000, run.info.end_time / 1000
        rates = [m.value for m in client.get_metric_history(run.info.run_id, "perf/images_per_s")]
        out.append(
            TrialTime(
                name=run.info.run_name,
                startup_s=max(0.0, first - start - every * per_step),
                training_s=last - first + every * per_step,
                evaluation_s=max(0.0, end - last),
                images_per_s=statistics.median(rates[1:] or rates) if rates else None,
                batch_size=int(params.get("data.batch_size", 0)),
                threads=max(1, int(float(params.get("train.cpus_per_worker", 1)))),
            )
        )
    return out


def breakdown(timings: dict, trials: list[TrialTime], table_s: float, wall_s: float, bench: dict | None) -> str:
    """The demo's time, part by part, as a small table, and its ratios."""
    rows = [("Ray start-up", timings.get("ray_start_s", 0.0)), ("scenes (render or find)", timings.get("scenes_s", 0))]
    for t in trials:
        rows += [
            (f"{t.name}: start-up", t.startup_s),
            (f"{t.name}: training", t.training_s),
            (f"{t.name}: evaluation", t.evaluation_s),
        ]
    rows.append(("table", table_s))
    accounted = sum(s for _, s in rows)
    rows.append(("elsewhere (Tune between trials, MLflow, the driver)", max(0.0, wall_s - accounted)))
    width = max(len(name) for name, _ in rows)
    lines = ["where the demo's time went:"]
    lines += [f"  {name:<{width}}  {seconds:7.1f} s  {100 * seconds / wall_s:5.1f}%" for name, seconds in rows]
    lines.append(f"  {'all':<{width}}  {wall_s:7.1f} s")
    work = timings.get("scenes_s", 0.0) + sum(t.training_s + t.evaluation_s for t in trials)
    if work > 0:
        lines.append(f"wall time / its work (scenes, training, evaluation): {wall_s / work:.2f}x")
    rates = [t.images_per_s for t in trials if t.images_per_s]
    if rates:
        trainer = statistics.mean(rates)
        line = f"training: {trainer:.1f} images/s (batch {trials[0].batch_size}, {trials[0].threads} thread(s))"
        if bench:
            line += (
                f"; `tipslab bench step` at the same model, batch and threads: {bench['images_per_s']:.1f} images/s"
                f" (trainer / bench: {trainer / bench['images_per_s']:.2f}x)"
            )
        lines.append(line)
    return "\n".join(lines)
