"""Image->text and text->image retrieval by cosine similarity of a CLS embedding and the text
embeddings (the paper: CLS_1 against human captions), as R@1, R@5 and R@10 in percent. An image
may own several captions (COCO, Flickr30k: 5): image->text counts a hit when any of its captions
ranks within k."""

import torch
import torch.nn.functional as F

from tipslab.jobs.eval import registry
from tipslab.jobs.eval.probes.context import ProbeContext, SplitFeatures

KS = registry.RETRIEVAL_KS
METRICS = registry.METRICS["retrieval"]
NEEDS = ("captions",)
TRAINED = False


def recall_at_k(image_emb, text_emb, caption_image, ks=KS, chunk: int = 1024) -> dict:
    """{"i2t_r1": ..., "t2i_r10": ...}; caption t belongs to image caption_image[t]. Ties count
    against the match, so a collapsed model (all embeddings equal) scores 0, not 100."""
    image, text = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    owner = torch.as_tensor(caption_image, dtype=torch.long)
    own = (image[owner] * text).sum(dim=1)  # [T] similarity of each caption to its own image
    own_best = torch.full((len(image),), -2.0).scatter_reduce(0, owner, own, "amax")
    i2t_rank, t2i_rank = [], []
    for i in range(0, len(image), chunk):  # other captions at least as close as the image's best own
        sim = image[i : i + chunk] @ text.T
        mine = owner[None, :] == torch.arange(i, i + len(sim))[:, None]
        i2t_rank.append(((sim >= own_best[i : i + chunk, None]) & ~mine).sum(dim=1))
    for t in range(0, len(text), chunk):  # other images at least as close as the caption's own
        sim = text[t : t + chunk] @ image.T
        mine = torch.arange(len(image))[None, :] == owner[t : t + chunk, None]
        t2i_rank.append(((sim >= own[t : t + chunk, None]) & ~mine).sum(dim=1))
    i2t_rank, t2i_rank = torch.cat(i2t_rank), torch.cat(t2i_rank)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = (i2t_rank < k).float().mean().item() * 100
        out[f"t2i_r{k}"] = (t2i_rank < k).float().mean().item() * 100
    return out


def score(model, test: SplitFeatures, ctx: ProbeContext) -> dict:
    return recall_at_k(test.image[ctx.tokens["retrieval"]], test.text, test.split.caption_image)


def protocol(ctx: ProbeContext, model) -> dict:
    caption = "human captions" if ctx.standard else ctx.ev.retrieval_caption
    return {"name": "cosine_recall", "token": ctx.tokens["retrieval"], "captions": caption}
