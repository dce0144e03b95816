"""Evaluation datasets: the scenes' probe splits and readers for the standard formats.

STANDARD maps each dataset name (the `<dataset>` of `eval/<dataset>/<metric>`) to its reader and the
probes its labels allow.
"""

from functools import partial

from tipslab.jobs.config import ALL_PROBES
from tipslab.jobs.eval.evalsets import ade20k, captions, class_folders, nyuv2, scenes, voc
from tipslab.jobs.eval.evalsets.base import IGNORE, EvalDataError, EvalSet, EvalSplit, check_disjoint

STANDARD = {
    "imagenet": (class_folders.read, ("knn", "zero_shot")),
    "coco": (partial(captions.read, name="coco"), ("retrieval",)),
    "flickr30k": (partial(captions.read, name="flickr30k"), ("retrieval",)),
    "pascal_voc": (voc.read, ("segmentation",)),
    "ade20k": (ade20k.read, ("segmentation",)),
    "nyuv2": (nyuv2.read, ("depth",)),
}


def dataset_probes(name: str, is_shards: bool) -> tuple[str, ...]:
    """The probes a dataset's labels allow; the probe splits of shards have every label."""
    if is_shards:
        return ALL_PROBES
    if name not in STANDARD:
        raise EvalDataError(f"unknown dataset {name!r}; known: {', '.join(STANDARD)}")
    return STANDARD[name][1]


def read_standard(name: str, root: str, size: int) -> EvalSet:
    reader, _ = STANDARD[name]
    es = reader(root, size)
    es.name = name
    return es


__all__ = [
    "ALL_PROBES",
    "STANDARD",
    "IGNORE",
    "EvalDataError",
    "EvalSet",
    "EvalSplit",
    "check_disjoint",
    "dataset_probes",
    "read_standard",
    "scenes",
]
