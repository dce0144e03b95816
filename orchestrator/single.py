"""`tipslab train`: one training run and its evaluation, as a sweep of one trial.

Going through Tune keeps one path for everything: the same trial function, the same MLflow writer
in the driver, per-step metrics included.
"""

import re
from pathlib import Path

from tipslab.jobs.config import experiment
from tipslab.jobs.eval.registry import metric_goal, metric_keys

from .config import config_hash, load_experiment, missing_data, to_dict
from .errors import ConfigError, UserError
from .launch import check_launch
from .runtime import storage_path
from .spec import Plan, ResourceSpec, Trial

EXPERIMENT = "tipslab-train"


def single_plan(config_path: str, overrides: list[str]) -> Plan:
    config = to_dict(load_experiment(config_path, overrides))  # rejected here, before Ray starts
    missing = missing_data([config], config_path)
    if missing:
        raise ConfigError(missing[0])
    exp = experiment(config)
    train = exp.train
    name = Path(config_path).stem
    spec = {
        "name": EXPERIMENT,
        "title": f"tipslab train {config_path}",
        "variants": {name: {}},
        "overrides": dict(o.split("=", 1) for o in overrides),
        "seeds": [train.seed],
        "metrics": [
            {"key": k, "header": k.split("/")[-1], "goal": metric_goal(k)} for k in sorted(metric_keys(exp.eval))
        ],
        "reference": {},
        "baseline": None,
    }
    resources = ResourceSpec(train.num_workers, train.gpus_per_worker, train.cpus_per_worker, 1)
    return Plan(Path(config_path), spec, "single", resources, [Trial(name, train.seed, config, config_hash(config))])


def run_single(config_path: str, overrides: list[str], address: str | None = None, resume: str | None = None):
    """With `resume` (a Ray Train run name: the run's folder under the run storage, the last part
    of its MLflow `checkpoint_uri` tag), training continues from that run's latest checkpoint, in
    its stage, at its data position; a new MLflow run records it."""
    if resume:
        from tipslab.jobs import storage

        if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", resume) or not storage.is_dir(storage.join(storage_path(), resume)):
            raise UserError(
                f"--resume {resume}: no training run of that name under {storage_path()} "
                "(the name is the run's folder there)"
            )
        overrides = [*overrides, f"train.run_name={resume}"]
    plan = single_plan(config_path, overrides)  # a bad config stops here, before torch, Ray or MLflow load
    check_launch(plan)
    from .sweep import run_sweep

    return run_sweep(plan, address=address)
