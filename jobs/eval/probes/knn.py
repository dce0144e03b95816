"""KNN classification on a CLS embedding: DINO's temperature-weighted votes of the k nearest
probe-train images (cosine similarity), scored as top-1 accuracy in percent on probe-test."""

import torch
import torch.nn.functional as F

from tipslab.jobs.eval import registry
from tipslab.jobs.eval.probes.context import ProbeContext, SplitFeatures

METRICS = registry.METRICS["knn"]
NEEDS = ("labels",)
TRAINED = True


def knn_predict(
    train_emb, train_labels, test_emb, k: int, temperature: float, num_classes: int, chunk: int = 1024
) -> torch.Tensor:
    train_emb, test_emb = F.normalize(train_emb.float(), dim=-1), F.normalize(test_emb.float(), dim=-1)
    k = min(k, len(train_emb))
    preds = []
    for i in range(0, len(test_emb), chunk):
        sim, idx = (test_emb[i : i + chunk] @ train_emb.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes).scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def fit(train: SplitFeatures, ctx: ProbeContext) -> dict:
    """KNN 'training' is keeping the probe-train embeddings and labels."""
    return {"emb": train.image[ctx.tokens["knn"]], "labels": torch.from_numpy(train.split.labels)}


def score(model: dict, test: SplitFeatures, ctx: ProbeContext) -> dict:
    labels = torch.from_numpy(test.split.labels)
    num_classes = int(max(model["labels"].max(), labels.max())) + 1
    pred = knn_predict(
        model["emb"], model["labels"], test.image[ctx.tokens["knn"]], ctx.ev.knn_k, ctx.ev.knn_temperature, num_classes
    )
    return {"knn_top1": (pred == labels).float().mean().item() * 100}


def protocol(ctx: ProbeContext, model) -> dict:
    ev = ctx.ev
    return {
        "name": "knn",
        "k": ev.knn_k,
        "temperature": ev.knn_temperature,
        "token": ctx.tokens["knn"],
        "source": "DINO",
    }
