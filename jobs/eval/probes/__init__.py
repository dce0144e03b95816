"""The paper's probes on frozen features, one module each, behind one interface:

- METRICS: {metric name: "max" | "min"} (the goal: which direction is better)
- NEEDS: the EvalSplit fields it needs (labels, segmentation, depth, normals, captions)
- TRAINED: whether it has `fit(probe_train features, ctx) -> model`; every probe has
  `score(model, probe_test features, ctx) -> {metric name: value}` and
  `protocol(ctx, model) -> {"name": ..., setting: value}`, what eval_results.json and MLflow record
  of how its numbers were made (docs/probes.md).
"""

from tipslab.jobs.eval.probes import depth, knn, normals, retrieval, segmentation, web_retrieval, zero_shot
from tipslab.jobs.eval.probes.context import ProbeContext, SplitFeatures

PROBES = {
    "zero_shot": zero_shot,
    "retrieval": retrieval,
    "web_retrieval": web_retrieval,
    "segmentation": segmentation,
    "depth": depth,
    "normals": normals,
    "knn": knn,
}
DENSE = ("segmentation", "depth", "normals")  # the probes that read patch tokens


__all__ = ["PROBES", "DENSE", "ProbeContext", "SplitFeatures"]
