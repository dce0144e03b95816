"""Tune search over loss weights: a grid, random samples, or TPE (Optuna), optionally with ASHA.

A grid is known in advance, so it becomes rows of the table like any axis (and resumes like any
row). Random and TPE samples are drawn while the sweep runs; each finished sample is one run, and
a resumed search only draws the samples still missing (TPE is told the finished ones first).
The objective is always an eval key: a training loss is what the weights change, so comparing runs
on it would reward switching terms off.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError

ALGORITHMS = ("grid", "random", "tpe")
# A spec's rows x seeds, a grid's points, a random or TPE search's samples: at most this many trials
# (the paper's largest table has tens). Counted before anything is expanded, so that 10 axes of 10
# values fail at once instead of building 10**10 rows.
MAX_TRIALS = 1000
DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass
class SearchSpec:
    algorithm: str = ""  # grid | random | tpe; empty: no search
    metric: str = ""  # the objective: an eval key (eval/<dataset>/<metric>)
    mode: str = ""  # max | min
    num_samples: int = 1  # random and tpe: how many trials to draw
    # dotted config key -> list (a grid) or {uniform|loguniform|randint: [low, high]} or {choice: [...]}
    space: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "none"  # none | asha: stop weak trials early on the periodic probes' results
    grace_period: int = 1  # asha: reports before a trial can be stopped
    reduction_factor: int = 2  # asha


def domain(where: str, key: str, value) -> tuple[str, list]:
    """(kind, arguments) of one search dimension, or an error naming it."""
    if isinstance(value, list) and value:
        return "grid", value
    if isinstance(value, dict) and len(value) == 1:
        kind, args = next(iter(value.items()))
        if kind in DOMAINS and isinstance(args, list) and args:
            if kind in ("uniform", "loguniform", "randint") and (len(args) != 2 or not args[0] < args[1]):
                raise ConfigError(f"{where}: search.space.{key}.{kind}: expected [low, high] with low < high")
            if kind == "loguniform" and args[0] <= 0:
                raise ConfigError(f"{where}: search.space.{key}.loguniform: low must be > 0")
            return kind, args
    raise ConfigError(
        f"{where}: search.space.{key}: expected a list of values or one of "
        f"{{{'|'.join(DOMAINS)}: [...]}}, got {value!r}"
    )


def grid_points(path, search: SearchSpec, variants: dict, axis_tags: dict) -> tuple[dict, dict]:
    """Every variant times every point of the grid, as rows named `variant[key=value,...]`."""
    import itertools

    dims = []
    for key, value in search.space.items():
        kind, args = domain(str(path), key, value)
        if kind not in ("grid", "choice"):
            raise ConfigError(f"{path}: search.space.{key}: a grid search takes lists of values, not {kind}")
        dims.append([(key, v) for v in args])
    if not dims:
        raise ConfigError(f"{path}: search.space: empty (name the loss weights to search)")
    count = max(len(variants), 1) * math.prod(len(d) for d in dims)
    if count > MAX_TRIALS:
        raise ConfigError(
            f"{path}: search.space: {len(variants)} variant(s) x {' x '.join(str(len(d)) for d in dims)} grid "
            f"points = {count} rows, more than the {MAX_TRIALS} a spec may have"
        )
    out, tags = {}, {}
    for variant, overrides in variants.items():
        for point in itertools.product(*dims):
            label = ",".join(
                f"{k.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in point
            )
            name = f"{variant}[{label}]"
            out[name] = {**(overrides or {}), **dict(point)}
            tags[name] = {**axis_tags[variant], **{k: str(v) for k, v in point}}
    return out, tags


def check_search(where: str, search: SearchSpec, trials: list, seeds: list) -> None:
    from tipslab.jobs.eval.registry import metric_keys

    if search.algorithm not in ALGORITHMS:
        raise ConfigError(f"{where}: search.algorithm: {search.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if not search.metric:
        raise ConfigError(f"{where}: search.metric: missing (the objective: an eval key)")
    if not search.metric.startswith("eval/"):
        raise ConfigError(
            f"{where}: search.metric: {search.metric!r} is not an eval key (eval/<dataset>/<metric>); "
            "a training loss is what the weights change, never the objective"
        )
    produced = metric_keys(trials[0].config["eval"])
    if search.metric not in produced:
        raise ConfigError(
            f"{where}: search.metric: no probe produces {search.metric!r}; probes give {sorted(produced)}"
        )
    if search.mode not in ("max", "min"):
        raise ConfigError(f"{where}: search.mode: {search.mode!r} must be 'max' or 'min'")
    if search.scheduler not in ("none", "asha"):
        raise ConfigError(f"{where}: search.scheduler: {search.scheduler!r} is not none or asha")
    if search.scheduler == "asha" and not trials[0].config["train"].get("probe_every"):
        raise ConfigError(
            f"{where}: search.scheduler: asha stops trials on periodic probe results: "
            "set train.probe_every > 0 in overrides"
        )
    if search.scheduler == "asha":  # ASHA reads the objective at every probe: the probe must report it
        from tipslab.jobs.train.periodic import periodic_keys

        reported = periodic_keys(trials[0].config)
        if search.metric not in reported:
            raise ConfigError(
                f"{where}: search.metric: asha reads {search.metric!r} during training, but the periodic probe "
                f"reports {reported} (jobs/train/periodic.py); add it to train.probe_metrics"
            )
    if search.algorithm == "grid":
        return
    if not 1 <= search.num_samples <= MAX_TRIALS:
        raise ConfigError(
            f"{where}: search.num_samples: {search.num_samples} is out of range: must be in [1, {MAX_TRIALS}]"
        )
    if search.scheduler == "asha" and not (1 <= search.grace_period and 2 <= search.reduction_factor <= 100):
        raise ConfigError(f"{where}: search: asha needs grace_period >= 1 and reduction_factor in [2, 100]")
    if not search.space:
        raise ConfigError(f"{where}: search.space: empty (name the loss weights to search)")
    for key, value in search.space.items():
        kind, _ = domain(where, key, value)
        if search.algorithm == "tpe" and kind == "grid":
            raise ConfigError(f"{where}: search.space.{key}: TPE samples a domain; write {{choice: [...]}} or a range")
    if len({t.variant for t in trials}) != 1 or len(seeds) != 1:
        raise ConfigError(
            f"{where}: search: a {search.algorithm} search runs one variant with one seed "
            "(each sample is one trial); use axes or seeds without a search to repeat it"
        )


def tune_space(search: SearchSpec) -> dict:
    """The search space in Tune's terms (dotted keys kept as the parameter names)."""
    from ray import tune

    make = {
        "grid": tune.choice,
        "choice": tune.choice,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    return {
        key: make[kind](args) for key, (kind, args) in ((k, domain("search", k, v)) for k, v in search.space.items())
    }


def searcher(search: SearchSpec, seed: int, done: list[tuple[dict, float]]):
    """Tune's search algorithm: None for random sampling, Optuna's TPE told the finished points."""
    if search.algorithm != "tpe":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(
        metric=search.metric,
        mode=search.mode,
        sampler=optuna.samplers.TPESampler(seed=seed),
        points_to_evaluate=[p for p, _ in done] or None,
        evaluated_rewards=[r for _, r in done] or None,
    )


def scheduler(search: SearchSpec | None, metric: str, mode: str):
    if search is None or search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        metric=metric, mode=mode, grace_period=search.grace_period, reduction_factor=search.reduction_factor
    )
