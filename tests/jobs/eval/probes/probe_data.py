"""Builders of probe inputs for the probe tests: splits whose features encode their labels, or not."""

import numpy as np
import torch

from tipslab.jobs.config import EvalConfig
from tipslab.jobs.eval.evalsets import EvalSet, EvalSplit
from tipslab.jobs.eval.probes import ProbeContext, SplitFeatures

TOKENS = {"retrieval": "cls_web", "zero_shot": "cls_web", "knn": "cls_web"}


def settings(**overrides) -> EvalConfig:
    return EvalConfig(**overrides)


def split(n: int, prefix: str, **labels) -> EvalSplit:
    return EvalSplit([f"{prefix}-{i}" for i in range(n)], [b""] * n, **labels)


def features(s: EvalSplit, **image) -> SplitFeatures:
    return SplitFeatures(s, {k: torch.as_tensor(v, dtype=torch.float32) for k, v in image.items()})


def context(data: EvalSet, train, test, prompts=None, **ev) -> ProbeContext:
    return ProbeContext(data, train, test, settings(**ev), TOKENS, prompts)


def one_hot(labels: np.ndarray, classes: int, scale: float = 3.0) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels] * scale
