"""What a probe sees: the frozen features of each split, next to that split's labels."""

from dataclasses import dataclass

import torch

from tipslab.jobs.config import EvalConfig
from tipslab.jobs.eval.evalsets import EvalSet, EvalSplit
from tipslab.jobs.eval.probes import protocols


@dataclass
class SplitFeatures:
    split: EvalSplit
    image: dict[str, torch.Tensor]  # cls_web, cls_synthetic [N, D]; patch_tokens [N, P, D] when extracted
    text: torch.Tensor | None = None  # [T, D] embeddings of split.captions
    web_text: torch.Tensor | None = None  # [N, D] embeddings of split.web_captions


@dataclass
class ProbeContext:
    data: EvalSet
    train: SplitFeatures | None  # probe-train: the only rows a probe is ever fit on
    test: SplitFeatures  # probe-test: only ever scored
    ev: EvalConfig
    tokens: dict[str, str]  # probe -> which CLS token serves it
    prompts: torch.Tensor | None = None  # [C, K, D] zero-shot prompt embeddings (class x template)
    standard: bool = False  # a standard dataset (jobs/eval/evalsets), not the probe splits of shards

    def protocol(self, probe: str) -> str | None:
        """The protocol `probe` follows here (protocols.py): eval.seg_protocol / eval.depth_protocol."""
        return protocols.resolve(probe, self.ev, self.standard)
