"""Evaluation datasets: the scenes' probe splits and readers for the standard formats.

STANDARD maps each dataset name (the `<dataset>` of `eval/<dataset>/<metric>`) to its reader and the
probes its labels allow.
"""

from functools import partial

from tipslab.jobs.config import ALL_PROBES
from tipslab.jobs.eval.evalsets import ade20k, captions, class_folders, nyuv2, scenes, voc
from tipslab.jobs.eval.evalsets.base import IGNORE, EvalDataError, EvalSet, EvalSplit, check_disjoint
from tipslab.jobs.eval.registry import DATASET_PROBES, dataset_probes

READERS = {
    "imagenet": class_folders.read,
    "coco": partial(captions.read, name="coco"),
    "flickr30k": partial(captions.read, name="flickr30k"),
    "pascal_voc": voc.read,
    "ade20k": ade20k.read,
    "nyuv2": nyuv2.read,
}
# Each with the probes its labels allow (jobs/eval/registry.py, which checks configs without torch).
STANDARD = {name: (reader, DATASET_PROBES[name]) for name, reader in READERS.items()}


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
