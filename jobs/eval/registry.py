"""The metric registry: the metrics each probe reports with the direction that is better, the
probes each evaluation dataset's labels allow, and so every metric key `eval/<dataset>/<metric>` an
evaluation config produces. Plain data, importable without torch or Ray: specs and configs are
checked against it before anything heavy loads."""

from tipslab.jobs.config import ALL_PROBES, EvalConfig, eval_config
from tipslab.models.errors import ConfigError

RETRIEVAL_KS = (1, 5, 10)  # recall@k of image->text and text->image retrieval
METRICS = {  # probe -> {metric: "max" | "min"}
    "zero_shot": {"zero_shot_top1": "max"},
    "retrieval": {f"{d}_r{k}": "max" for d in ("i2t", "t2i") for k in RETRIEVAL_KS},
    "web_retrieval": {f"web_{d}_r{k}": "max" for d in ("i2t", "t2i") for k in RETRIEVAL_KS},
    "segmentation": {"seg_miou": "max"},
    "depth": {"depth_rmse": "min", "depth_absrel": "min", "depth_delta1": "max"},
    "normals": {"normals_mean_angle": "min"},
    "knn": {"knn_top1": "max"},
}
GOALS = {metric: goal for metrics in METRICS.values() for metric, goal in metrics.items()}
# Standard-format datasets (jobs/eval/evalsets) -> the probes their labels allow; the probe splits
# of shards have every label.
DATASET_PROBES = {
    "imagenet": ("knn", "zero_shot"),
    "coco": ("retrieval",),
    "flickr30k": ("retrieval",),
    "pascal_voc": ("segmentation",),
    "ade20k": ("segmentation",),
    "nyuv2": ("depth",),
}


def metric_goal(key: str) -> str:
    """ "max" or "min" for a registry key `eval/<dataset>/<metric>` (or a bare metric name)."""
    metric = key.rsplit("/", 1)[-1]
    if metric not in GOALS:
        raise KeyError(f"{key!r}: no probe produces the metric {metric!r}; known: {', '.join(sorted(GOALS))}")
    return GOALS[metric]


def dataset_probes(name: str, is_shards: bool) -> tuple[str, ...]:
    """The probes a dataset's labels allow."""
    if is_shards:
        return ALL_PROBES
    if name not in DATASET_PROBES:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASET_PROBES)}")
    return DATASET_PROBES[name]


def planned(ev: EvalConfig) -> list[tuple[str, str | None, tuple[str, ...]]]:
    """(dataset name, folder or None for the experiment's probe splits, probes) in run order."""
    plan = [(ev.dataset, None, tuple(p for p in ALL_PROBES if p in ev.probes))] if ev.dataset else []
    for name, path in ev.datasets.items():
        try:
            allowed = dataset_probes(name, is_shards=False)
        except ConfigError as err:
            raise ConfigError(f"eval.datasets.{name}: {err}") from None
        plan.append((name, path, tuple(p for p in allowed if p in ev.probes)))
    return plan


def metric_keys(eval_cfg) -> set[str]:
    """Every metric key this evaluation configuration (an EvalConfig, or an experiment's `eval`
    mapping) produces."""
    return {
        f"eval/{name}/{metric}"
        for name, _, probes in planned(eval_config(eval_cfg))
        for probe in probes
        for metric in METRICS[probe]
    }


def protocol_text(protocol: dict) -> str:
    """One line: `name: key=value, ...` (an MLflow tag, a table's footnote)."""
    settings = ", ".join(f"{k}={v}" for k, v in protocol.items() if k != "name")
    return f"{protocol['name']}: {settings}" if settings else protocol["name"]


def protocol_by_metric(protocols: dict) -> dict[str, str]:
    """{metric key: protocol_text} from an evaluation's protocols ({"<dataset>/<probe>": {...}})."""
    out = {}
    for where, protocol in protocols.items():
        dataset, _, probe = where.rpartition("/")
        for metric in METRICS.get(probe, ()):
            out[f"eval/{dataset}/{metric}"] = protocol_text(protocol)
    return out
