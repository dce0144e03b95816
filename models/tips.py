"""The TIPS student: image tower with two CLS tokens, text tower, the DINO/iBOT heads and the tag head.

Heads exist only for terms whose weight is above 0, so a switched-off term costs nothing and
leaves no unused parameters for DDP to trip over.
"""

import torch
from torch import nn

from .config import TIPSConfig, masked_count
from .errors import ConfigError
from .heads import PrototypeHead
from .mim import masked_tokens
from .tagging import TagHead
from .text import TextTower
from .vision import VisionTower


def make_head(cfg: TIPSConfig, prototypes: int) -> PrototypeHead:
    m = cfg.model
    return PrototypeHead(m.dims()[0], m.head_hidden, m.head_bottleneck, prototypes, m.head_norm_last_layer)


def make_tag_head(cfg: TIPSConfig) -> TagHead:
    m = cfg.model
    width, _, _, mlp_dim, _ = m.dims()
    return TagHead(width, m.num_tags, m.tag_layers, m.tag_heads, mlp_dim)


class TIPSStudent(nn.Module):
    def __init__(self, cfg: TIPSConfig):
        super().__init__()
        loss = cfg.loss  # its values are checked by LossConfig (models/config.py)
        self.cfg = cfg
        self.vision = VisionTower(cfg.model)
        self.text = TextTower(cfg.model)
        distill_prototypes, mim_prototypes = cfg.model.prototypes()
        self.head = None  # the one head of both terms, with model.shared_heads
        if cfg.model.shared_heads and loss.distill_weight > 0 and loss.mim_weight > 0:
            # Registered once, as `head` (one parameter set, one state_dict entry, one teacher copy);
            # distill_head and mim_head are plain references to it.
            self.head = make_head(cfg, distill_prototypes)  # the counts are equal (ModelConfig.check)
            object.__setattr__(self, "distill_head", self.head)
            object.__setattr__(self, "mim_head", self.head)
        else:
            self.distill_head = make_head(cfg, distill_prototypes) if loss.distill_weight > 0 else None
            self.mim_head = make_head(cfg, mim_prototypes) if loss.mim_weight > 0 else None
        self.tag_head = make_tag_head(cfg) if loss.tag_weight > 0 else None
        if self.mim_head is None:
            # Without MIM nothing is masked: a frozen mask token keeps DDP from waiting for its gradient.
            self.vision.mask_token.requires_grad_(False)
        if loss.clip_weight == 0:  # likewise the text tower, with no contrastive term to train it
            self.text.requires_grad_(False)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)

    def forward(self, batch: dict) -> dict:
        """Everything the objective needs from the student, in one forward (one DDP call).

        batch: global_crop [B,3,H,W], local_crops [B,V,3,h,w], masks bool [B,N],
        web_tokens / synthetic_tokens [B,L]; tags [B, num_tags] multi-hot float, needed only when
        loss.tag_weight > 0 (the tags travel on to the objective as `tag_targets`).
        """
        loss = self.cfg.loss
        masks = batch["masks"] if self.mim_head is not None else None
        view = self.vision(batch["global_crop"], masks)
        out = {"temperature": self.text.temperature}
        if loss.clip_weight > 0 or self.tag_head is not None:
            clip_view = view if (loss.clip_view == "masked" or masks is None) else self.vision(batch["global_crop"])
            out.update(cls_web=clip_view["cls_web"], cls_synthetic=clip_view["cls_synthetic"])
        mode = loss.caption_mode if loss.clip_weight > 0 else None  # no contrastive term: no captions to encode
        if mode == "both_single_cls":
            pick = torch.rand(batch["web_tokens"].shape[0], device=batch["web_tokens"].device) < 0.5
            out["text_web"] = self.text(torch.where(pick[:, None], batch["synthetic_tokens"], batch["web_tokens"]))
        if mode in ("web", "dual_cls"):
            out["text_web"] = self.text(batch["web_tokens"])
        if mode in ("synthetic", "dual_cls"):
            out["text_synthetic"] = self.text(batch["synthetic_tokens"])
        if self.tag_head is not None:
            if "tags" not in batch:
                raise ConfigError(
                    "loss.tag_weight > 0 needs batch['tags'] (multi-hot [B, model.num_tags]), "
                    "which this data does not have; set loss.tag_weight: 0"
                )
            # The tags describe the whole image (they come from its caption): the head sees the
            # contrastive loss's view, all its tokens.
            tokens = torch.cat(
                [clip_view["cls_web"][:, None], clip_view["cls_synthetic"][:, None], clip_view["patch_tokens"]], dim=1
            )
            out["tag_logits"] = self.tag_head(tokens)
            out["tag_targets"] = batch["tags"]
        if self.mim_head is not None:
            count = masked_count(loss.mask_ratio, masks.shape[1])
            out.update(head_outputs(self.mim_head, masked_tokens(view["patch_tokens"], masks, count), "mim", loss))
        if self.distill_head is not None:
            local = batch["local_crops"]
            b, v = local.shape[:2]
            local_view = self.vision(local.flatten(0, 1))
            local_out = head_outputs(self.distill_head, local_view[loss.distill_cls], "distill", loss)
            out.update({k: x.unflatten(0, (b, v)) if k.startswith("local") else x for k, x in local_out.items()})
        return out


# The outputs of each head, by loss term: its scores over the prototypes, or (with loss.chunk_rows)
# the features before its prototype layer and that layer's weight, for the chunked loss.
HEAD_OUTPUTS = {
    "mim": ("masked_patch_logits", "masked_patch_features", "mim_prototypes"),
    "distill": ("local_logits", "local_features", "distill_prototypes"),
    "teacher_distill": ("cls_logits", "cls_features", "distill_prototypes"),
    "teacher_mim": ("masked_patch_logits", "masked_patch_features", "mim_prototypes"),
}


def head_outputs(head: PrototypeHead, tokens: torch.Tensor, term: str, loss) -> dict[str, torch.Tensor]:
    """{scores} of `head` on `tokens`, or {features, prototype weight} when loss.chunk_rows > 0."""
    logits, features, weight = HEAD_OUTPUTS[term]
    if loss.chunk_rows > 0:
        return {features: head.features(tokens), weight: head.prototypes.weight}
    return {logits: head(tokens)}
