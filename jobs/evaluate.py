"""Evaluation on frozen features: image<->text retrieval and a linear segmentation probe.

The probe trains on the probe-train split and is scored on the separate probe-test split; retrieval
is scored on probe-test. Results are returned as `eval/<dataset>/<metric>` and written as JSON.
"""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from tipslab.models.checkpoint import load_student

from .data.pipeline import split_dir
from .data.scenes import CLASSES
from .data.shards import decode_png, shard_files

PROBE_METRICS = {"retrieval": ("i2t_r1", "t2i_r1"), "segmentation": ("seg_miou",)}
RESULTS_FILE = "eval_results.json"


def metric_keys(eval_cfg: dict) -> set[str]:
    """The registry: every metric key this evaluation configuration produces."""
    return {f"eval/{eval_cfg['dataset']}/{m}" for names in PROBE_METRICS.values() for m in names}


def retrieval_token(exp: dict) -> str:
    token = exp["eval"]["retrieval_token"]
    if token != "auto":
        return token
    dual = exp["loss"]["caption_mode"] == "dual_cls"
    return "cls_synthetic" if dual and exp["eval"]["retrieval_caption"] == "synthetic_caption" else "cls_web"


def load_split(root: str, split: str, columns: list[str]) -> dict:
    """A small probe split, fully in memory (probe splits are hundreds of images)."""
    parts = [pq.read_table(f, columns=columns).to_pydict() for f in shard_files(split_dir(root, split))]
    return {c: [v for p in parts for v in p[c]] for c in columns}


def images_tensor(encoded: list[bytes], size: int) -> torch.Tensor:
    x = torch.from_numpy(np.stack([decode_png(b)[..., :3] for b in encoded])).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def labels_tensor(encoded: list[bytes]) -> torch.Tensor:
    return torch.from_numpy(np.stack([decode_png(b) for b in encoded]).astype(np.int64))


@torch.no_grad()
def image_features(student, images: torch.Tensor, batch_size: int) -> dict:
    outs = [student.vision(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


@torch.no_grad()
def text_features(student, tokenizer, captions: list[str], batch_size: int) -> torch.Tensor:
    tokens = torch.from_numpy(tokenizer.encode(captions))
    return torch.cat([student.encode_text(tokens[i:i + batch_size]) for i in range(0, len(tokens), batch_size)])


def retrieval_recall_at_1(image_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[float, float]:
    """(image->text R@1, text->image R@1) in percent; pair i is (image i, caption i)."""
    sim = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    target = torch.arange(len(sim))
    i2t = (sim.argmax(dim=1) == target).float().mean().item() * 100
    t2i = (sim.argmax(dim=0) == target).float().mean().item() * 100
    return i2t, t2i


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean IoU in percent over the classes present in the prediction or the ground truth."""
    idx = target.flatten() * num_classes + pred.flatten()
    conf = torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return (inter[present] / union[present]).mean().item() * 100


def patch_grid(patch_tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, C, g, g]."""
    b, n, c = patch_tokens.shape
    g = int(round(n**0.5))
    return patch_tokens.transpose(1, 2).reshape(b, c, g, g)


def linear_segmentation_probe(train_feats, train_seg, test_feats, test_seg, num_classes: int,
                              epochs: int, lr: float, seed: int = 0) -> float:
    """DINOv2's linear protocol in small: a 1x1 linear layer on frozen patch tokens, logits
    upsampled to the label resolution, trained with cross-entropy; returns test mIoU."""
    torch.manual_seed(seed)
    mean = train_feats.mean(dim=(0, 2, 3), keepdim=True)
    std = train_feats.std(dim=(0, 2, 3), keepdim=True) + 1e-6
    probe = torch.nn.Conv2d(train_feats.shape[1], num_classes, 1)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    x, size = (train_feats - mean) / std, train_seg.shape[-2:]
    for _ in range(epochs):
        logits = F.interpolate(probe(x), size=size, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, train_seg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = F.interpolate(probe((test_feats - mean) / std), size=test_seg.shape[-2:], mode="bilinear",
                               align_corners=False)
    return mean_iou(logits.argmax(1), test_seg, num_classes)


def evaluate_checkpoint(checkpoint_dir: str, exp: dict, out_dir: str | None = None) -> dict:
    """Run every probe of `exp["eval"]` on the checkpoint; returns {metric key: value}."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    student, tokenizer, _ = load_student(checkpoint_dir)
    ev, root, size = exp["eval"], exp["data"]["root"], exp["model"]["image_size"]
    caption_col = ev["retrieval_caption"]
    test = load_split(root, ev["probe_test_split"], ["image", "segmentation", caption_col])
    train = load_split(root, ev["probe_train_split"], ["image", "segmentation"])
    test_img = image_features(student, images_tensor(test["image"], size), ev["batch_size"])
    train_img = image_features(student, images_tensor(train["image"], size), ev["batch_size"])

    text = text_features(student, tokenizer, test[caption_col], ev["batch_size"])
    i2t, t2i = retrieval_recall_at_1(test_img[retrieval_token(exp)], text)
    miou = linear_segmentation_probe(
        patch_grid(train_img["patch_tokens"]), labels_tensor(train["segmentation"]),
        patch_grid(test_img["patch_tokens"]), labels_tensor(test["segmentation"]),
        num_classes=len(CLASSES), epochs=ev["seg_probe_epochs"], lr=ev["seg_probe_lr"],
    )
    name = ev["dataset"]
    results = {f"eval/{name}/i2t_r1": i2t, f"eval/{name}/t2i_r1": t2i, f"eval/{name}/seg_miou": miou}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, RESULTS_FILE), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    return results
