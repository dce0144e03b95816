"""`tipslab train`: one training run and its evaluation, as a sweep of one trial.

Going through Tune keeps one path for everything: the same trial function, the same MLflow writer
in the driver, per-step metrics included.
"""
from pathlib import Path

from tipslab.jobs.evaluate import metric_keys

from .config import config_hash, load_experiment, to_dict
from .spec import Plan, ResourceSpec, Trial
from .sweep import SweepResult, run_sweep

EXPERIMENT = "tipslab-train"


def single_plan(config_path: str, overrides: list[str]) -> Plan:
    config = to_dict(load_experiment(config_path, overrides))  # rejected here, before Ray starts
    train = config["train"]
    name = Path(config_path).stem
    spec = {"name": EXPERIMENT, "title": f"tipslab train {config_path}", "variants": {name: {}},
            "overrides": dict(o.split("=", 1) for o in overrides), "seeds": [train["seed"]],
            "metrics": [{"key": k, "header": k.split("/")[-1], "goal": "max"} for k in sorted(metric_keys(config["eval"]))],
            "reference": {}, "baseline": None}
    resources = ResourceSpec(train["num_workers"], train["gpus_per_worker"], train["cpus_per_worker"], 1)
    return Plan(Path(config_path), spec, "single", resources, [Trial(name, train["seed"], config, config_hash(config))])


def run_single(config_path: str, overrides: list[str], address: str | None = None) -> SweepResult:
    return run_sweep(single_plan(config_path, overrides), address=address)
