"""Ray's own floor under a trial (`tipslab bench trial`): a bare TorchTrainer in a one-trial Tuner,
with no tipslab code in it, timed from the Tuner's launch to the trial's first report.

The trainable and its worker are shaped as a sweep's are (a trial driver without a CPU, one
training worker of one CPU on gloo, Train's reports forwarded to Tune), and the worker imports torch
and reports at once: what remains is Ray's start-up of the trial, the Train controller, the worker
group and the process group. Its report carries the first two of the start-up phases a tipslab
worker reports (jobs/train/startup.py): `perf/startup/workers_s` (the trainer's launch to the worker
process's start) and `perf/startup/worker_setup_s` (to the training function's entry).
`tipslab bench trial` puts tipslab's launch-to-first-step and its phases beside these.
"""

import os
import time
import uuid


def _bare_loop(config: dict) -> None:
    entered = time.time()
    import psutil
    import ray.train
    import torch

    started = psutil.Process().create_time()
    phases = {"perf/startup/workers_s": started - config["launched"], "perf/startup/worker_setup_s": entered - started}
    ray.train.report({"step": 1, "loss": float(torch.zeros(1).sum()), **phases})


def _bare_trainable(config: dict) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(
        _bare_loop,
        train_loop_config={"launched": time.time()},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": config["cpus"]}),
        run_config=ray.train.RunConfig(
            name=f"bare-floor-{uuid.uuid4().hex[:8]}", storage_path=config["storage"], callbacks=[TuneReportCallback()]
        ),
    ).fit()


def bare_trial_floor(storage_path: str, driver_resources: dict, cpus_per_worker: float = 1.0) -> dict:
    """Seconds from a one-trial Tuner's launch to its first report, and to its end, and the start-up
    phases its worker reported, on the Ray instance the caller started; `driver_resources`: the
    trial driver's, as a sweep asks them."""
    from ray import tune

    first: list[tuple[float, dict]] = []

    class FirstReport(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not first:
                first.append((time.time(), result))

    tuner = tune.Tuner(
        tune.with_resources(_bare_trainable, driver_resources),
        param_space={"storage": storage_path, "cpus": cpus_per_worker},
        run_config=tune.RunConfig(
            name=f"bench-floor-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            storage_path=storage_path,
            verbose=0,
            callbacks=[FirstReport()],
        ),
    )
    start = time.time()
    results = tuner.fit()
    total = time.time() - start
    if results.errors or not first:
        raise RuntimeError(f"the bare trial failed: {results.errors[0] if results.errors else 'no report'}")
    at, result = first[0]
    phases = {k: v for k, v in result.items() if k.startswith("perf/startup/")}
    return {"launch_to_first_report_s": at - start, "total_s": total, "phases": phases}
