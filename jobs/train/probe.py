"""The periodic probe during training, for early-stopping schedulers (ASHA).

It scores the student in-process (rank 0; every rank under fsdp) on the first `train.probe_images`
images of each split it needs, and reports under the final evaluation's keys (eval/<dataset>/...)
so that a search objective can be read at every probe step: by default retrieval on the probe-test
split (i2t_r1, t2i_r1); with `train.probe_metrics`, the keys listed there, which may include the
dense probes' (segmentation, depth, normals) on any dataset with those labels (jobs/train/periodic.py
says which keys it can report). The dense probes are the final evaluation's own (jobs/eval/probes),
fit on the probe-train images' patch tokens and scored on the probe-test images, always in their
cheap variant (trained on the patch grid: `eval.dense_train_size` 0), whatever the final evaluation
uses: a few seconds on a few dozen images. The numbers are noisier than the final evaluation's.
"""

import dataclasses

import numpy as np
import torch

from tipslab.jobs.config import experiment
from tipslab.jobs.eval.evalsets import EvalSet, EvalSplit, read_standard
from tipslab.jobs.eval.evalsets.scenes import read_split
from tipslab.jobs.eval.evaluate import cls_tokens, load_data
from tipslab.jobs.eval.probes import DENSE, PROBES, ProbeContext, SplitFeatures
from tipslab.jobs.eval.probes.features import load_pixels
from tipslab.jobs.train.periodic import check_periodic, periodic_keys, producible
from tipslab.models.errors import ConfigError


def head(split: EvalSplit, n: int) -> EvalSplit:
    """The first n images of a split with their labels, and the captions of those images."""
    out = dataclasses.replace(split, keys=split.keys[:n], images=split.images[:n])
    for name in ("labels", "segmentation", "depth", "normals"):
        if getattr(split, name) is not None:
            setattr(out, name, getattr(split, name)[:n])
    if split.web_captions is not None:
        out.web_captions = split.web_captions[:n]
    if split.captions is not None:
        keep = np.flatnonzero(split.caption_image < n)
        out.captions, out.caption_image = [split.captions[i] for i in keep], split.caption_image[keep]
    return out


class Target:
    """One dataset the probe scores: its few images, the probes to run on them, their keys."""

    def __init__(self, es: EvalSet, probes: list[str], keys: set[str], size: int, n: int):
        trained = any(PROBES[p].TRAINED for p in probes)
        self.es = dataclasses.replace(es, train=head(es.train, n) if trained else None, test=head(es.test, n))
        self.probes, self.keys = probes, keys
        self.test_pixels = self.pixels(self.es.test, size)
        self.train_pixels = self.pixels(self.es.train, size) if trained else None

    @staticmethod
    def pixels(split: EvalSplit, size: int) -> torch.Tensor:
        return torch.stack([load_pixels(im, size, k) for im, k in zip(split.images, split.keys)])


class PeriodicProbe:
    def __init__(self, exp, tokenizer):
        exp = experiment(exp)
        check_periodic(exp)
        self.exp, self.tokenizer = exp, tokenizer
        # The cheap protocols, whatever the final evaluation uses: a probe every few hundred steps.
        self.ev = dataclasses.replace(
            exp.eval, dense_train_size=0, seg_protocol="patch_grid", depth_protocol="scenes_bins"
        )
        size, n = exp.model.image_size, exp.train.probe_images
        wanted = periodic_keys(exp)
        where = producible(exp)
        groups: dict[str, tuple[str | None, set[str], set[str]]] = {}
        for key in wanted:
            # the default keys are the probe splits' retrieval even where eval.probes leaves it out
            name, path, probe = where.get(key, (exp.eval.dataset, None, "retrieval"))
            groups.setdefault(name, (path, set(), set()))[1].add(probe)
            groups[name][2].add(key)
        self.targets = []
        for name, (path, probes, keys) in groups.items():
            order = [p for p in PROBES if p in probes]
            self.targets.append((name, path, Target(self.read(name, path, order), order, keys, size, n)))

    def read(self, name: str, path: str | None, probes: list[str]) -> EvalSet:
        exp, ev = self.exp, self.exp.eval
        if path is not None:
            return read_standard(name, path, exp.model.image_size)
        if not any(PROBES[p].TRAINED for p in probes):  # retrieval only: the probe-test split alone
            split, _ = read_split(exp.data.root, ev.probe_test_split, exp.model.image_size, ev.retrieval_caption)
            es = EvalSet(name, None, split)
        else:
            es = load_data(name, None, exp)
        for probe in probes:
            missing = [f for f in PROBES[probe].NEEDS if getattr(es.test, f) is None]
            if missing or probe in es.unavailable:
                raise ConfigError(
                    f"train.probe_every: the {name} probe splits have no {', '.join(missing) or probe} to probe "
                    f"{probe} with during training; set train.probe_metrics (or train.probe_every: 0)"
                )
        return es

    @torch.no_grad()
    def features(self, student, pixels: torch.Tensor, device, patches: bool) -> dict[str, torch.Tensor]:
        out: dict[str, list] = {}
        for i in range(0, len(pixels), self.ev.batch_size):
            vision = student.vision(pixels[i : i + self.ev.batch_size].to(device))
            for name in ("cls_web", "cls_synthetic") + (("patch_tokens",) if patches else ()):
                out.setdefault(name, []).append(vision[name].float().cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    def __call__(self, student, device: torch.device) -> dict[str, float]:
        was_training = student.training
        student.eval()
        try:
            return self.scores(student, device)
        finally:
            student.train(was_training)

    def scores(self, student, device: torch.device) -> dict[str, float]:
        metrics = {}
        for name, path, t in self.targets:
            patches = any(p in DENSE for p in t.probes)
            text = None
            if "retrieval" in t.probes:
                with torch.no_grad():
                    tokens = torch.from_numpy(self.tokenizer.encode(t.es.test.captions)).to(device)
                    text = student.encode_text(tokens).float().cpu()
            test = SplitFeatures(t.es.test, self.features(student, t.test_pixels, device, patches), text)
            train = None
            if t.train_pixels is not None:
                train = SplitFeatures(t.es.train, self.features(student, t.train_pixels, device, patches))
            ctx = ProbeContext(t.es, train, test, self.ev, cls_tokens(self.exp, shards=path is None))
            for probe in t.probes:
                module = PROBES[probe]
                model = module.fit(train, ctx) if module.TRAINED else None
                for metric, value in module.score(model, test, ctx).items():
                    if f"eval/{name}/{metric}" in t.keys:
                        metrics[f"eval/{name}/{metric}"] = float(value)
        return metrics
