"""Zero-shot classification: each class name goes through every prompt template and the text
tower; the normalised embeddings are averaged per class (CLIP's ensembling), and each probe-test
image takes the class nearest to its CLS embedding. Top-1 accuracy in percent."""

import torch
import torch.nn.functional as F

from tipslab.jobs.eval import registry
from tipslab.jobs.eval.probes.context import ProbeContext, SplitFeatures

METRICS = registry.METRICS["zero_shot"]
NEEDS = ("labels",)
TRAINED = False


def templates(ev) -> list:
    """The prompt templates of eval.zero_shot_template_set: callables name -> prompt."""
    if ev.zero_shot_template_set == "own":
        return [t.format for t in ev.zero_shot_templates]
    from open_clip import zero_shot_metadata  # the published sets, as open_clip keeps them

    if ev.zero_shot_template_set == "simple":
        return list(zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES)
    return list(zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)


def prompts(class_names: list[str | None], templates: list) -> list[str]:
    """Class-major: the prompts of class c are [c * len(templates), (c + 1) * len(templates)).
    A template is a format string with {} or a callable of the name."""
    fill = [t.format if isinstance(t, str) else t for t in templates]
    return [t(name) for name in class_names if name is not None for t in fill]


def classify(image_emb: torch.Tensor, prompt_emb: torch.Tensor) -> torch.Tensor:
    """prompt_emb [C, K, D] -> the index (among C) of each image's class."""
    classes = F.normalize(F.normalize(prompt_emb.float(), dim=-1).mean(dim=1), dim=-1)
    return (F.normalize(image_emb.float(), dim=-1) @ classes.T).argmax(dim=1)


def score(model, test: SplitFeatures, ctx: ProbeContext) -> dict:
    candidates = torch.tensor([i for i, n in enumerate(ctx.data.class_names) if n is not None])
    pred = candidates[classify(test.image[ctx.tokens["zero_shot"]], ctx.prompts)]
    return {"zero_shot_top1": (pred == torch.from_numpy(test.split.labels)).float().mean().item() * 100}


def protocol(ctx: ProbeContext, model) -> dict:
    return {
        "name": "prompt_ensemble",
        "template_set": ctx.ev.zero_shot_template_set,
        "templates": int(ctx.prompts.shape[1]),  # per class, whichever set: the prompts are [C, K, D]
        "token": ctx.tokens["zero_shot"],
        "source": "CLIP",
    }
