"""Ablation specs: one YAML file per paper table, turned into validated trials.

A spec names a base experiment, the variants (rows), the seeds, the metrics (columns, keys of the
probes' registry), the paper's reference numbers, the resources of each trial, and a `smoke`
overlay that shrinks the whole spec to a laptop-sized run. Every problem is reported with the spec
file and the key, before any cluster resource is taken.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from tipslab.jobs.evaluate import metric_keys

from .config import ConfigError, compose, config_hash, merge, parse_overrides, read_yaml, to_dict


@dataclass
class MetricSpec:
    key: str
    header: str = ""
    goal: str = "max"  # max | min


@dataclass
class ResourceSpec:
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs and GPUs allow


@dataclass
class SmokeSpec:
    overrides: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    seeds: Optional[list[int]] = None
    metrics: Optional[list[MetricSpec]] = None


@dataclass
class AblationSpec:
    name: str
    base: str
    title: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, Any] = field(default_factory=dict)
    baseline: Optional[str] = None
    seeds: list[int] = field(default_factory=lambda: [0])
    metrics: list[MetricSpec] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    smoke: SmokeSpec = field(default_factory=SmokeSpec)


@dataclass
class Trial:
    variant: str
    seed: int
    config: dict
    config_hash: str

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"


@dataclass
class Plan:
    """A spec resolved for one size (smoke or full): what a sweep runs and how it is tabled."""
    path: Path
    spec: dict  # the resolved spec (smoke overlay applied), logged with the sweep
    size: str
    resources: ResourceSpec
    trials: list[Trial]


def load_spec(path: str | Path, smoke: bool = False, overrides: list[str] = ()) -> Plan:
    path = Path(path)
    raw = read_yaml(path)
    for required in ("name", "base"):
        if required not in raw:
            raise ConfigError(f"{path}: {required}: missing (every spec needs `name` and `base`)")
    spec = OmegaConf.to_object(merge(OmegaConf.structured(AblationSpec), raw, str(path)))
    if not spec.variants:
        raise ConfigError(f"{path}: variants: a spec needs at least one variant")
    resources, seeds, metrics = spec.resources, spec.seeds, spec.metrics
    spec_overrides = dict(spec.overrides)
    if smoke:
        spec_overrides.update(spec.smoke.overrides)
        resources = OmegaConf.to_object(merge(OmegaConf.structured(resources), spec.smoke.resources,
                                              str(path), prefix="smoke.resources."))
        seeds = spec.smoke.seeds if spec.smoke.seeds is not None else seeds
        metrics = spec.smoke.metrics if spec.smoke.metrics is not None else metrics
    if not seeds:
        raise ConfigError(f"{path}: seeds: at least one seed is needed")
    if spec.baseline is not None and spec.baseline not in spec.variants:
        raise ConfigError(f"{path}: baseline: {spec.baseline!r} is not one of the variants {list(spec.variants)}")
    for variant in spec.reference:
        if variant != "source" and variant not in spec.variants:
            raise ConfigError(f"{path}: reference.{variant}: no such variant (variants: {list(spec.variants)})")
    for i, m in enumerate(metrics):
        if m.goal not in ("max", "min"):
            raise ConfigError(f"{path}: metrics[{i}].goal: {m.goal!r} is not 'max' or 'min'")

    base = path.parent / spec.base
    base_data = read_yaml(base)
    cli = parse_overrides(list(overrides))
    trials = []
    for variant, variant_overrides in spec.variants.items():
        sources = [(base_data, str(base)), (spec_overrides, f"{path}: overrides")]
        sources.append((variant_overrides or {}, f"{path}: variants.{variant}"))
        sources.append((cli, "command line"))
        for seed in seeds:
            sources_seeded = sources + [({
                "train.seed": seed,
                "train.num_workers": resources.workers_per_trial,
                "train.gpus_per_worker": resources.gpus_per_worker,
                "train.cpus_per_worker": resources.cpus_per_worker,
            }, f"{path}: seeds/resources")]
            config = to_dict(compose(sources_seeded, f"{path}: variants.{variant}"))
            trials.append(Trial(variant, seed, config, config_hash(config)))

    produced = metric_keys(trials[0].config["eval"])
    for i, m in enumerate(metrics):
        if m.key not in produced:
            raise ConfigError(f"{path}: metrics[{i}].key: no probe produces {m.key!r}; "
                              f"configured probes give {sorted(produced)}")
    resolved = OmegaConf.to_container(OmegaConf.structured(spec))
    resolved.update(seeds=list(seeds), metrics=[OmegaConf.to_container(OmegaConf.structured(m)) for m in metrics],
                    resources=OmegaConf.to_container(OmegaConf.structured(resources)),
                    overrides=spec_overrides)
    resolved.pop("smoke")
    return Plan(path, resolved, "smoke" if smoke else "full", resources, trials)
