"""TIPS pretraining on Ray Train: a TorchTrainer whose workers run the training loop (jobs/train/loop.py).

Checkpoints go to the run's storage (a folder or s3://) through `ray.train.report`, every
`train.checkpoint_every` steps and at the end, the last `train.checkpoints_to_keep` kept (their
contents: jobs/train/state.py). Running again with the same (storage_path, name) resumes a stopped
run from its latest checkpoint.

A non-finite loss (or too many bad rows) is not a failure to retry: the workers write the reason
to `stopped.json` in the run's folder and return, and `fit()` raises `RunStopped` with it.
"""

import json
import os
import time

import ray.train
import ray.train.torch
from ray.train.torch import TorchConfig, TorchTrainer

from tipslab.jobs import storage
from tipslab.jobs.config import as_dict, experiment
from tipslab.jobs.redact import remember_keys
from tipslab.jobs.train.loop import Loop
from tipslab.jobs.train.startup import StartupClock
from tipslab.jobs.train.state import NonFiniteLossError, RunStopped
from tipslab.jobs.train.trace import ROW_TRACE_ENV

STOPPED_FILE = "stopped.json"


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. config: {"experiment": the ExperimentConfig, "run": {"path": ...,
    "secret_keys": the experiment's keys whose values are masked in what the worker writes, "launched":
    when the trainer was built}}."""
    clock = StartupClock(config["run"].get("launched"))  # first: the start-up's phases end here
    exp = config["experiment"]
    remember_keys(as_dict(exp), config["run"].get("secret_keys", ()))
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    try:
        Loop(exp, rank, world_size, device, clock).run()
    except (NonFiniteLossError, RunStopped) as err:
        # Every rank gets here at the same step (the checks are collective); retrying would only
        # meet the same loss again, so the run ends here and fit() raises it.
        if rank == 0:
            storage.write_bytes(
                storage.join(config["run"]["path"], STOPPED_FILE),
                json.dumps({"reason": str(err), "kind": type(err).__name__}).encode(),
            )


class TIPSTrainer(TorchTrainer):
    """A TorchTrainer whose `fit()` raises `RunStopped` when the workers stopped the run."""

    def __init__(self, *args, run_path: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._run_path = run_path

    def fit(self):
        marker = storage.join(self._run_path, STOPPED_FILE)
        if storage.exists(marker):
            storage.delete(marker)  # left by an earlier attempt of this run
        result = super().fit()
        if storage.exists(marker):
            raise RunStopped(json.loads(storage.read_bytes(marker))["reason"])
        return result


def build_trainer(
    exp,
    *,
    name: str,
    storage_path: str,
    callbacks=(),
    max_failures: int | None = None,
    resources_per_worker: dict | None = None,
    secret_keys=(),
):
    """A TorchTrainer for one experiment; `fit()` runs it (or resumes the run stored under
    (storage_path, name)) and returns the Ray Train result. `resources_per_worker` adds custom
    resources to each worker's CPU/GPU request (e.g. to pin workers to some nodes). `secret_keys`: the
    experiment's keys whose values came from the environment (jobs/redact.py; names only travel)."""
    exp = experiment(exp)  # its values checked (train.strategy among them) before Ray starts
    train = exp.train
    use_gpu = train.gpus_per_worker > 0
    resources = {"CPU": train.cpus_per_worker, **(resources_per_worker or {})}
    if use_gpu:
        resources["GPU"] = train.gpus_per_worker
    run_path = storage.join(storage_path, name) if storage.is_s3(storage_path) else os.path.join(storage_path, name)
    # Ray workers see no variables set in the driver after ray.init: the S3 settings go along, the
    # credentials never (the node's environment, a credentials file or the node's role gives them).
    env = {**storage.aws_env(), **{k: os.environ[k] for k in (ROW_TRACE_ENV,) if k in os.environ}}
    return TIPSTrainer(
        train_loop,
        run_path=run_path,
        train_loop_config={
            "experiment": exp,
            "run": {"path": run_path, "secret_keys": list(secret_keys), "launched": time.time()},
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": env},
            # relax_collectives_on_preemption stays off: with it Ray Train may register a checkpoint
            # without the files of a preempted rank, which for fsdp would be a partial checkpoint.
            failure_config=ray.train.FailureConfig(
                max_failures=train.max_failures if max_failures is None else max_failures, controller_failure_limit=3
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.checkpoints_to_keep),
        ),
    )
