"""Ablation specs: one YAML file per paper table, turned into validated trials.

A spec names a base experiment, the rows (explicit `variants`, or `axes` whose product makes the
rows), the seeds, the metrics (columns, keys of the probes' registry), the paper's reference
numbers, an optional Tune search over loss weights, the resources of each trial, and overlays of
the whole spec for the smaller sizes. A spec runs at one of three sizes:

- full: the spec as written, the paper's setting (GPUs, web-scale shards, standard eval datasets);
- mini: its `mini` overlay, procedural scenes on CPU, sized so that the effects of a table's rows
  should show beyond seed noise (several seeds) in about 90 CPU-minutes per 3 x 3 table;
- smoke: its `smoke` overlay, the machinery end to end in minutes on a laptop.

Every problem is reported with the spec file and the key before any cluster resource is taken.
"""

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tipslab.jobs.config import TRAIN_RANGES
from tipslab.jobs.eval import registry
from tipslab.jobs.train.periodic import check_periodic

from .config import (
    ConfigError,
    compose,
    config_hash,
    manifests_read_once,
    merge,
    parse_overrides,
    read_yaml,
    schema,
    to_dict,
)
from .search import MAX_TRIALS, SearchSpec, check_search, grid_points


@dataclass
class MetricSpec:
    key: str
    header: str = ""
    goal: str = ""  # max | min; empty: the registry's direction for the key, else max


@dataclass
class ResourceSpec:
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs and GPUs allow


@dataclass
class AblationSpec:
    name: str
    base: str  # the base experiment YAML, relative to the spec's folder
    title: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, Any] = field(default_factory=dict)  # row name -> {dotted key: value}
    # Grid product instead of explicit rows: axis -> {value label: overrides}, or dotted key -> [values].
    axes: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    metrics: list[MetricSpec] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)  # source: str, then variant -> {key: number}
    search: SearchSpec = field(default_factory=SearchSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    # In a size overlay: rows of the full spec this size leaves out (say, rows of ours that would
    # double a CPU table's cost).
    drop: list[str] = field(default_factory=list)
    mini: dict[str, Any] = field(default_factory=dict)  # any of the keys above, laid over them
    smoke: dict[str, Any] = field(default_factory=dict)  # likewise


SEED_MAX = TRAIN_RANGES["seed"][1]
SIZES = ("full", "mini", "smoke")  # full: the spec as written; the others: its overlay of that name
OVERLAYS = SIZES[1:]


@dataclass
class Trial:
    variant: str
    seed: int
    config: dict
    config_hash: str
    tags: dict = field(default_factory=dict)  # axis -> value label; search key -> sampled value

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"


@dataclass
class Plan:
    """A spec resolved for one size (full, mini or smoke): what a sweep runs and how it is tabled."""

    path: Path
    spec: dict  # the resolved spec (the size's overlay applied), logged with the sweep
    size: str  # one of SIZES: the MLflow tag tipslab.size, which identifies a sweep with the spec's name
    resources: ResourceSpec
    trials: list[Trial]  # fixed trials; for a random or TPE search, the point it samples around
    search: SearchSpec | None = None

    @property
    def sampled(self) -> bool:
        """A random or TPE search: its trials are drawn while the sweep runs."""
        return self.search is not None and self.search.algorithm in ("random", "tpe")

    def sampled_trial(self, variant: str, seed: int, values: dict) -> Trial:
        """A trial of a random/TPE search: a resolved point of the spec plus sampled loss weights."""
        start = next(t for t in self.trials if t.variant == variant and t.seed == seed)
        config = to_dict(
            compose(
                [(start.config, f"{self.path}: variants.{variant}"), (values, f"{self.path}: search")],
                f"{self.path}: search",
            )
        )
        label = ",".join(f"{k.split('.')[-1]}={v:.4g}" for k, v in sorted(values.items()))
        return Trial(
            f"{variant}[{label}]",
            seed,
            config,
            config_hash(config),
            {**start.tags, **{k: f"{v:.6g}" for k, v in values.items()}},
        )


def deep_overlay(under: dict, over: dict) -> dict:
    """`over` laid on `under`: mappings merge key by key, anything else is replaced; an empty
    mapping replaces too (so a smoke overlay can clear, say, the full run's `eval.datasets`)."""
    out = dict(under)
    for key, value in over.items():
        merge = isinstance(value, dict) and value and isinstance(out.get(key), dict)
        out[key] = deep_overlay(out[key], value) if merge else value
    return out


# Files a spec may name: relative to the spec's folder when they are found there.
FILE_KEYS = ("data.tag_vocab", "model.tokenizer")


def anchored(folder: Path, overrides: dict | None) -> dict:
    out = dict(overrides or {})
    for key in FILE_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (folder / value).is_file():
            out[key] = str((folder / value).resolve())
    return out


def typed_spec(raw: dict, source: str) -> AblationSpec:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AblationSpec), raw))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{source}: {key}: {str(getattr(err, 'msg', err)).splitlines()[0]}") from None


def expand_axes(path: Path, axes: dict) -> tuple[dict, dict]:
    """The product of the axes: {variant: overrides} and {variant: {axis: value label}}."""
    choices = []
    for axis, values in axes.items():
        if isinstance(values, list) and values:  # dotted config key -> values
            choices.append([(axis, f"{axis.split('.')[-1]}={_label(v)}", {axis: v}) for v in values])
        elif isinstance(values, dict) and values:
            for label, overrides in values.items():
                if not isinstance(overrides, dict):
                    raise ConfigError(f"{path}: axes.{axis}.{label}: expected a mapping of overrides")
            choices.append([(axis, str(label), overrides or {}) for label, overrides in values.items()])
        else:
            raise ConfigError(
                f"{path}: axes.{axis}: expected a non-empty list of values of the key {axis!r} "
                "or a mapping {value label: overrides}"
            )
    count = math.prod(len(c) for c in choices)
    if count > MAX_TRIALS:
        sizes = " x ".join(str(len(c)) for c in choices)
        raise ConfigError(f"{path}: axes: {sizes} = {count} variants, more than the {MAX_TRIALS} a spec may have")
    variants, tags = {}, {}
    for combo in itertools.product(*choices):
        name = "/".join(label for _, label, _ in combo)
        variants[name] = {k: v for _, _, overrides in combo for k, v in overrides.items()}
        tags[name] = {axis: label for axis, label, _ in combo}
    return variants, tags


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def metric_goal(key: str) -> str:
    """The registry's direction for a metric key."""
    return registry.metric_goal(key)


def sized_spec(path: Path, size: str):
    """The typed spec at `size`, every overlay checked whichever size runs (a typo in an overlay
    fails the full spec too)."""
    if size not in SIZES:
        raise ConfigError(f"{path}: size: {size!r} is not a size; sizes: {', '.join(SIZES)}")
    raw = read_yaml(path)
    for required in ("name", "base"):
        if required not in raw:
            raise ConfigError(f"{path}: {required}: missing (every spec needs `name` and `base`)")
    spec = typed_spec(raw, str(path))
    unsized = {k: v for k, v in raw.items() if k not in OVERLAYS}
    sized = {}
    for overlay in OVERLAYS:
        block = getattr(spec, overlay)
        for key in ("name", *OVERLAYS):
            if key in block:
                raise ConfigError(f"{path}: {overlay}.{key}: the {overlay} overlay cannot change `{key}`")
        sized[overlay] = typed_spec(deep_overlay(unsized, block), f"{path}: {overlay}")
        dropped = sized[overlay]
        for name in dropped.drop:
            if name not in dropped.variants or name == dropped.baseline:
                why = "is the baseline" if name == dropped.baseline else "is not a row of the spec"
                raise ConfigError(f"{path}: {overlay}.drop: {name!r} {why}")
            del dropped.variants[name]
    if spec.drop:
        raise ConfigError(f"{path}: drop: only a size overlay (mini, smoke) can leave rows out")
    if size == "full":
        return spec
    if size not in raw:
        has = ", ".join(["full", *(o for o in OVERLAYS if o in raw)])
        raise ConfigError(
            f"{path}: {size}: the spec has no `{size}:` overlay, so it cannot run at size {size} (its sizes: {has})"
        )
    return sized[size]


def spec_rows(where: str, spec) -> tuple[dict, dict, object]:
    """(variants: name -> overrides, axis tags per variant, the search or None), checked."""
    if spec.variants and spec.axes:
        raise ConfigError(f"{where}: axes: give `variants` or `axes`, not both")
    for key, count in (("variants", len(spec.variants)), ("seeds", len(spec.seeds))):
        if count > MAX_TRIALS:
            raise ConfigError(f"{where}: {key}: {count} {key}, more than the {MAX_TRIALS} a spec may have")
    variants, axis_tags = (
        expand_axes(where, spec.axes) if spec.axes else (dict(spec.variants), {v: {} for v in spec.variants})
    )
    for name, value in variants.items():
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where}: variants.{name}: expected a mapping of overrides, got {value!r}")
    search = spec.search if spec.search.algorithm else None
    if search and search.algorithm == "grid":  # a grid is rows known in advance: one more axis
        variants, axis_tags = grid_points(where, search, variants, axis_tags)
    if not variants:
        raise ConfigError(f"{where}: variants: a spec needs at least one variant (or `axes`)")
    if not spec.seeds:
        raise ConfigError(f"{where}: seeds: at least one seed is needed")
    if len(variants) * len(spec.seeds) > MAX_TRIALS:
        raise ConfigError(
            f"{where}: seeds: {len(variants)} variants x {len(spec.seeds)} seeds = "
            f"{len(variants) * len(spec.seeds)} trials, more than the {MAX_TRIALS} a spec may have"
        )
    for seed in spec.seeds:
        if not 0 <= seed <= SEED_MAX:
            raise ConfigError(f"{where}: seeds: {seed} is out of range: must be in [0, {SEED_MAX}]")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"{where}: seeds: {spec.seeds} repeats a seed")
    check_resources(where, spec.resources)
    if spec.baseline is not None and spec.baseline not in variants:
        raise ConfigError(f"{where}: baseline: {spec.baseline!r} is not one of the variants {list(variants)}")
    return variants, axis_tags, search


RESOURCE_RANGES = {  # as train.num_workers, gpus_per_worker and cpus_per_worker (jobs/config.py)
    "workers_per_trial": TRAIN_RANGES["num_workers"],
    "gpus_per_worker": TRAIN_RANGES["gpus_per_worker"],
    "cpus_per_worker": TRAIN_RANGES["cpus_per_worker"],
    "max_concurrent_trials": (0, MAX_TRIALS),  # 0: as many as the cluster allows
}


def check_resources(where: str, resources: ResourceSpec) -> None:
    for key, (low, high) in RESOURCE_RANGES.items():
        value = getattr(resources, key)
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{where}: resources.{key}: {value} is out of range: must be in [{low}, {high}]")


def check_columns(where: str, spec, variants: dict, size: str) -> None:
    """The reference numbers name variants and numbers; every metric has a goal; at full size every
    paper number sits under a key the table shows."""
    for variant, numbers in spec.reference.items():
        if variant == "source":
            continue
        if variant not in variants:
            raise ConfigError(f"{where}: reference.{variant}: no such variant (variants: {list(variants)})")
        for key, value in (numbers or {}).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}: reference.{variant}.{key}: {value!r} is not a number")
    for i, m in enumerate(spec.metrics):
        try:
            m.goal = m.goal or metric_goal(m.key)
        except KeyError as err:  # a metric name no probe has: one line, not a traceback
            raise ConfigError(f"{where}: metrics[{i}].key: {err.args[0]}") from None
        if m.goal not in ("max", "min"):
            raise ConfigError(f"{where}: metrics[{i}].goal: {m.goal!r} is not 'max' or 'min'")
    if size == "full":  # paper numbers under keys the table does not show would never be seen
        keys = {m.key for m in spec.metrics}
        for variant, numbers in spec.reference.items():
            for key in (numbers or {}) if variant != "source" else ():
                if key not in keys:
                    raise ConfigError(
                        f"{where}: reference.{variant}.{key}: not one of the spec's metrics {sorted(keys)}"
                    )


def spec_trials(path: Path, where: str, spec, variants: dict, axis_tags: dict, overrides: list[str]) -> list[Trial]:
    """One trial per (variant, seed): base <- spec overrides <- variant <- command line, checked,
    each producing every metric of the spec. The base and the spec's overrides are merged once, and
    each variant is composed once: its seeds differ only in train.seed (checked in spec_rows)."""
    base = path.parent / spec.base
    if not base.is_file():
        raise ConfigError(f"{where}: base: {base}: no such file (the base experiment, relative to the spec's folder)")
    shared = merge(schema(), read_yaml(base), str(base))
    shared = merge(shared, anchored(path.parent, spec.overrides), f"{where}: overrides")
    cli = parse_overrides(list(overrides))
    resources = spec.resources
    trials = []
    for variant, variant_overrides in variants.items():
        first = to_dict(
            compose(
                [
                    (anchored(path.parent, variant_overrides), f"{where}: variants.{variant}"),
                    (
                        {
                            "train.seed": spec.seeds[0],
                            "train.num_workers": resources.workers_per_trial,
                            "train.gpus_per_worker": resources.gpus_per_worker,
                            "train.cpus_per_worker": resources.cpus_per_worker,
                        },
                        f"{where}: seeds/resources",
                    ),
                    (cli, "command line"),  # last: what the user types beats the spec, resources included
                ],
                f"{where}: variants.{variant}",
                start=shared,
            )
        )
        check_variant(where, spec, variant, first)
        for seed in spec.seeds:
            config = copy.deepcopy(first)
            if "train.seed" not in cli:
                config["train"]["seed"] = seed
            trials.append(Trial(variant, seed, config, config_hash(config), dict(axis_tags[variant])))
    return trials


def check_variant(where: str, spec, variant: str, config: dict) -> None:
    """The variant's eval config produces every metric of the spec; its periodic probe's keys exist."""
    try:
        produced = registry.metric_keys(config["eval"])
    except ConfigError as err:  # an unknown probe or dataset name in eval.*
        raise ConfigError(f"{where}: variant {variant!r}: eval: {err}") from None
    try:
        check_periodic(config)
    except ConfigError as err:
        raise ConfigError(f"{where}: variant {variant!r}: {err}") from None
    for i, m in enumerate(spec.metrics):
        if m.key not in produced:
            raise ConfigError(
                f"{where}: metrics[{i}].key: no probe produces {m.key!r} in variant "
                f"{variant!r}; its probes give {sorted(produced)}"
            )


def load_spec(path: str | Path, smoke: bool = False, overrides: list[str] = (), size: str | None = None) -> Plan:
    """The spec at `size` (full, mini or smoke; `smoke=True` is size smoke), validated."""
    path = Path(path)
    size = size or ("smoke" if smoke else "full")
    spec = sized_spec(path, size)
    where = f"{path}{f': {size} overlay' if size != 'full' else ''}"
    variants, axis_tags, search = spec_rows(where, spec)
    check_columns(where, spec, variants, size)
    with manifests_read_once():  # the trials share their splits
        trials = spec_trials(path, where, spec, variants, axis_tags, overrides)
    if search:
        check_search(where, search, trials, spec.seeds)
    resolved = OmegaConf.to_container(OmegaConf.structured(spec))
    for overlay in OVERLAYS:
        resolved.pop(overlay)
    resolved.update(variants=variants, axes_of=axis_tags)
    return Plan(path, resolved, size, spec.resources, trials, search)
