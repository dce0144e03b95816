"""Retrieval against a shard split's web captions, always with CLS_1 (the web token), beside the
`retrieval` probe against `eval.retrieval_caption`. The paper's caption-source table asks both
questions: dual CLS must win against the synthetic captions and stay level against the web ones."""

from tipslab.jobs.eval import registry
from tipslab.jobs.eval.probes.context import ProbeContext, SplitFeatures
from tipslab.jobs.eval.probes.retrieval import recall_at_k

METRICS = registry.METRICS["web_retrieval"]
NEEDS = ("web_captions",)
TRAINED = False


def score(model, test: SplitFeatures, ctx: ProbeContext) -> dict:
    own = range(len(test.split.web_captions))
    found = recall_at_k(test.image[ctx.tokens["web_retrieval"]], test.web_text, own)
    return {f"web_{name}": value for name, value in found.items()}


def protocol(ctx: ProbeContext, model) -> dict:
    return {"name": "cosine_recall", "token": ctx.tokens["web_retrieval"], "captions": "web_caption"}
