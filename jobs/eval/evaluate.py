"""Evaluation on frozen features: the paper's probes (jobs/eval/probes) on the probe splits of the
experiment's shards (the procedural scenes by default) and on standard datasets (jobs/eval/evalsets).

Features come from Ray Data batch inference, or from the calling task itself on a CPU cluster
(jobs/eval/probes/features.py); every trained probe is fit on probe-train features only and scored
on probe-test. Results are `eval/<dataset>/<metric>`
(the registry that specs are validated against: `metric_keys`, `metric_goal`), written as JSON
next to a `features.npz` of a few probe-test images and their patch tokens (the report's PCA maps).
The JSON's `protocols` entry names the protocol of every probe on every dataset with its settings
(`<dataset>/<probe>`: {"name": ..., ...}); the dense probes' protocols are in docs/probes.md.
"""

import io
import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from tipslab.jobs import storage
from tipslab.jobs.config import EvalConfig, ExperimentConfig, experiment
from tipslab.jobs.eval.evalsets import EvalSet, check_disjoint, read_standard, scenes
from tipslab.jobs.eval.probes import DENSE, PROBES, ProbeContext, SplitFeatures, protocols
from tipslab.jobs.eval.probes.features import features, load_pixels
from tipslab.jobs.eval.probes.zero_shot import prompts, templates
from tipslab.jobs.eval.registry import metric_goal, metric_keys, planned
from tipslab.jobs.redact import redact, scrub
from tipslab.models.config import LossConfig

RESULTS_FILE = "eval_results.json"
PROTOCOLS = "protocols"  # the entry of RESULTS_FILE that says how each probe made its numbers
FEATURES_FILE = "features.npz"
log = logging.getLogger(__name__)

__all__ = ["metric_keys", "metric_goal", "evaluate_checkpoint", "evaluate", "Evaluation"]


def retrieval_token(exp) -> str:
    """The CLS token that retrieval on the experiment's probe splits compares with text."""
    exp = experiment(exp)
    return token_for_retrieval(exp.loss, exp.eval)


def token_for_retrieval(loss: LossConfig, ev: EvalConfig) -> str:
    if ev.retrieval_token != "auto":
        return ev.retrieval_token
    dual = loss.caption_mode == "dual_cls"
    return "cls_synthetic" if dual and ev.retrieval_caption == "synthetic_caption" else "cls_web"


def cls_tokens(exp: ExperimentConfig, shards: bool) -> dict[str, str]:
    """Which CLS token serves each global probe. Human captions (COCO, Flickr30k) are compared with
    CLS_1, as in the paper, unless eval.retrieval_token names one."""
    ev = exp.eval
    retrieval = token_for_retrieval(exp.loss, ev) if shards or ev.retrieval_token != "auto" else "cls_web"
    return {"retrieval": retrieval, "web_retrieval": "cls_web", "zero_shot": ev.zero_shot_token, "knn": ev.knn_token}


def load_data(name: str, path: str | None, exp: ExperimentConfig, probes=()) -> EvalSet:
    size, ev = exp.model.image_size, exp.eval
    if path is None:
        return scenes.read(exp.data.root, size, name, ev.probe_train_split, ev.probe_test_split, ev.retrieval_caption)
    return read_standard(name, path, protocols.label_size(ev, probes, standard=True, image_size=size))


def why_not(probe: str, es: EvalSet) -> str | None:
    """Why `probe` cannot run on this data, or None."""
    module = PROBES[probe]
    if probe in es.unavailable:
        return es.unavailable[probe]
    splits = [("probe-test", es.test)] + ([("probe-train", es.train)] if module.TRAINED else [])
    for split_name, split in splits:
        if split is None:
            return f"it has no {split_name} split"
        missing = [f for f in module.NEEDS if getattr(split, f) is None]
        if missing:
            return f"its {split_name} split has no {', '.join(missing)}"
    if probe == "zero_shot" and not any(n is not None for n in es.class_names):
        return "it has no class names"
    return None


@dataclass
class Evaluation:
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # "<dataset>/<probe>" -> why
    seconds: dict[str, float] = field(default_factory=dict)  # "<dataset>/features", "<dataset>/<probe>"
    # "<dataset>/<probe>" -> {"name": the probe's protocol, its settings} (probes/protocols.py)
    protocols: dict[str, dict] = field(default_factory=dict)


def extract(checkpoint: str, es: EvalSet, runnable: list[str], ev: EvalConfig, size: int, patches: bool):
    """(probe-train features or None, probe-test features, zero-shot prompt embeddings or None),
    from one Ray Data pass over both splits' images and the texts."""
    train = es.train if any(PROBES[p].TRAINED for p in runnable) else None
    splits = [es.test] + ([train] if train is not None else [])
    captions = es.test.captions if "retrieval" in runnable else []
    web = es.test.web_captions if "web_retrieval" in runnable else []
    per_class = templates(ev) if "zero_shot" in runnable else []
    prompt_texts = prompts(es.class_names, per_class) if per_class else []
    feats = features(
        checkpoint,
        [k for s in splits for k in s.keys],
        [im for s in splits for im in s.images],
        captions + web + prompt_texts,
        size,
        patches,
        ev.batch_size,
    )
    texts = torch.from_numpy(feats.pop("text"))
    n = len(es.test)
    caption_emb, web_emb = texts[: len(captions)], texts[len(captions) : len(captions) + len(web)]
    test = SplitFeatures(
        es.test,
        {k: torch.from_numpy(v[:n]) for k, v in feats.items()},
        caption_emb if captions else None,
        web_emb if web else None,
    )
    train_feats = SplitFeatures(train, {k: torch.from_numpy(v[n:]) for k, v in feats.items()}) if train else None
    prompt_emb = None
    if prompt_texts:
        prompt_emb = texts[len(captions) + len(web) :].reshape(-1, len(per_class), texts.shape[-1])
    return train_feats, test, prompt_emb


def evaluate(checkpoint: str, exp, out_dir: str | None = None, on_progress=None) -> Evaluation:
    """Every configured probe on every configured dataset; `checkpoint` is a folder or s3:// URI.
    `on_progress(text)`, if given, hears of each dataset's features and each probe as it ends."""
    started = time.perf_counter()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    exp = experiment(exp)
    ev, size, result, pca = exp.eval, exp.model.image_size, Evaluation(), None
    tell = on_progress or (lambda text: None)
    plan = list(planned(ev))
    for index, (name, path, probes) in enumerate(plan):
        t0 = time.perf_counter()
        es = load_data(name, path, exp, probes)
        check_disjoint(es)
        runnable = []
        for probe in probes:
            reason = why_not(probe, es)
            if reason:
                log.warning("eval: %s probe on %s skipped: %s", probe, name, reason)
                result.skipped[f"{name}/{probe}"] = reason
            else:
                runnable.append(probe)
        if not runnable:
            continue
        first = index == 0 and ev.pca_images > 0  # its probe-test images go to features.npz
        train, test, prompt_emb = extract(
            checkpoint, es, runnable, ev, size, patches=first or any(p in DENSE for p in runnable)
        )
        result.seconds[f"{name}/features"] = time.perf_counter() - t0
        tell(f"eval {name} ({index + 1}/{len(plan)}): features in {result.seconds[f'{name}/features']:.1f} s")
        ctx = ProbeContext(es, train, test, ev, cls_tokens(exp, shards=path is None), prompt_emb, path is not None)
        for probe in runnable:
            t0, module = time.perf_counter(), PROBES[probe]
            model = module.fit(ctx.train, ctx) if module.TRAINED else None  # probe-train rows only
            scores = module.score(model, ctx.test, ctx)
            for metric, value in scores.items():
                result.metrics[f"eval/{name}/{metric}"] = float(value)
            result.protocols[f"{name}/{probe}"] = module.protocol(ctx, model)
            result.seconds[f"{name}/{probe}"] = time.perf_counter() - t0
            told = ", ".join(f"{k} {float(v):.4g}" for k, v in scores.items())
            tell(f"eval {name}: {probe} in {result.seconds[f'{name}/{probe}']:.1f} s ({told})")
        if first:
            pca = pca_arrays(es, test, ev.pca_images, size)
    result.seconds["total"] = time.perf_counter() - started
    if out_dir:
        write_outputs(out_dir, result, pca)
    return result


def pca_arrays(es: EvalSet, test: SplitFeatures, n: int, size: int) -> dict[str, np.ndarray]:
    """The first n probe-test images (uint8 [n, S, S, 3]) and their patch tokens [n, P, D]."""
    n = min(n, len(es.test))
    images = [load_pixels(im, size, k) for im, k in zip(es.test.images[:n], es.test.keys[:n])]
    return {
        "keys": np.array(es.test.keys[:n]),
        "dataset": np.array(redact(es.name)),
        "images": (torch.stack(images).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy(),
        "patch_tokens": test.image["patch_tokens"][:n].numpy(),
    }


def write_outputs(out_dir: str, result: Evaluation, pca: dict | None) -> None:
    storage.make_dirs(out_dir)
    body = scrub({**result.metrics, "perf/eval_seconds": result.seconds["total"], PROTOCOLS: result.protocols})
    storage.write_bytes(storage.join(out_dir, RESULTS_FILE), json.dumps(body, indent=2, sort_keys=True).encode())
    if pca is not None:
        buf = io.BytesIO()
        np.savez(buf, **pca)
        storage.write_bytes(storage.join(out_dir, FEATURES_FILE), buf.getvalue())


def evaluate_checkpoint(checkpoint_dir: str, exp, out_dir: str | None = None) -> dict:
    """Run every probe of `exp.eval` on the checkpoint; returns {metric key: value}, plus the
    evaluation's wall time as `perf/eval_seconds`."""
    result = evaluate(checkpoint_dir, exp, out_dir)
    return {**result.metrics, "perf/eval_seconds": result.seconds["total"]}
