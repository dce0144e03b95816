"""The probe splits of a sharded dataset (the procedural scenes by default): every label at once.

Shards carry `label`, `segmentation` (PNG of class ids), `depth` (16-bit PNG, millimetres) and,
once the scenes write them, `normals` (RGB PNG of (n + 1) / 2 * 255); a probe whose column is
missing is reported as unavailable rather than failing the evaluation.
"""

import numpy as np
import pyarrow.parquet as pq

from tipslab.jobs import storage
from tipslab.jobs.data.pipeline.columns import PROBE_COLUMNS
from tipslab.jobs.data.pipeline.streaming import split_dir
from tipslab.jobs.data.scenes.layout import CLASSES
from tipslab.jobs.data.shards.format import shard_files
from tipslab.jobs.eval.evalsets.base import EvalSet, EvalSplit, read_depth_mm, read_label_map, read_normals_png

WEB_CAPTION = "web_caption"
DENSE = {"segmentation": read_label_map, "depth": read_depth_mm, "normals": read_normals_png}


def read_split(root: str, split: str, size: int, caption_column: str) -> tuple[EvalSplit, set[str]]:
    """One split in memory (probe splits are hundreds of images); returns it and its columns."""
    files = [storage.resolve(f) for f in shard_files(split_dir(root, split))]
    columns = set(pq.read_schema(files[0][1], filesystem=files[0][0]).names)
    extra = ("label", caption_column, WEB_CAPTION, *DENSE)
    wanted = [*PROBE_COLUMNS] + [c for c in dict.fromkeys(extra) if c in columns]
    parts = [pq.read_table(path, columns=wanted, filesystem=fs).to_pydict() for fs, path in files]
    rows = {c: [v for p in parts for v in p[c]] for c in wanted}
    keys = rows["key"]
    out = EvalSplit(keys=keys, images=rows["image"])
    if "label" in rows:
        out.labels = np.array([-1 if v is None else v for v in rows["label"]], dtype=np.int64)
    for column, read in DENSE.items():
        if column in rows:
            setattr(
                out,
                column,
                np.stack([read(v, size, f"{split} row {k!r} column {column!r}") for k, v in zip(keys, rows[column])]),
            )
    if caption_column in rows:
        out.captions = [c or "" for c in rows[caption_column]]
        out.caption_image = np.arange(len(keys))
    if WEB_CAPTION in rows:
        out.web_captions = [c or "" for c in rows[WEB_CAPTION]]
    return out, columns


def read(
    root: str,
    size: int,
    name: str = "scenes",
    train_split: str = "probe_train",
    test_split: str = "probe_test",
    caption_column: str = "synthetic_caption",
) -> EvalSet:
    train, train_cols = read_split(root, train_split, size, caption_column)
    test, test_cols = read_split(root, test_split, size, caption_column)
    unavailable = {}
    needs = {
        "segmentation": "segmentation",
        "depth": "depth",
        "normals": "normals",
        "knn": "label",
        "zero_shot": "label",
        "retrieval": caption_column,
        "web_retrieval": WEB_CAPTION,
    }
    for probe, column in needs.items():
        missing = [s for s, cols in ((train_split, train_cols), (test_split, test_cols)) if column not in cols]
        if probe in ("zero_shot", "retrieval", "web_retrieval"):  # training-free: only probe-test must have it
            missing = [s for s in missing if s == test_split]
        if missing:
            unavailable[probe] = f"the shards of {', '.join(missing)} have no {column!r} column"
    # The scenes' image label is the class of the largest object; background is never one.
    names = [None if c == "background" else c for c in CLASSES]
    return EvalSet(name, train, test, class_names=names, seg_classes=len(CLASSES), unavailable=unavailable)
