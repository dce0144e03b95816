"""Configuration owned by the model layer: the towers and the objective.

Values the papers do not state (marked "unverified") are plain defaults here, easy to override.
"""

import math
from dataclasses import dataclass, field

from .errors import ConfigError

# width, depth, heads, mlp hidden (TIPS paper / official code; patch 14 for every size).
# "tiny" and "small-cpu" are ours, for CPU runs; they are not TIPS sizes.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 2, 2, 128),
    "small-cpu": (128, 4, 4, 256),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "So400m": (1152, 27, 16, 4304),
    "g": (1536, 40, 24, 6144),
}
# Text tower depth: 12 layers, 27 for So400m (the TIPS paper); tiny sizes follow the image tower.
TEXT_DEPTH = {"So400m": 27}
MLP_KINDS = ("auto", "gelu", "swiglu")  # model.mlp
CAPTION_MODES = ("web", "synthetic", "both_single_cls", "dual_cls")  # loss.caption_mode
CLS_TOKENS = ("cls_web", "cls_synthetic")  # loss.distill_cls, eval.*_token
CLIP_VIEWS = ("masked", "clean")  # loss.clip_view
MASK_MODES = ("random", "blockwise")  # loss.mask_mode
CENTERINGS = ("mean", "sinkhorn_knopp")  # loss.centering


def masked_count(ratio: float, patches: int) -> int:
    """How many of `patches` a mask at `ratio` covers. Every mask of a batch covers exactly this many
    (jobs/data/pipeline/masking.py), which gives the masked tokens a shape known on the host. Here,
    with no torch, for the views' workers, which import nothing of the model to mask."""
    return int(round(ratio * patches))


def bad(key: str, why: str):
    """Raise the ConfigError of one field: "<dotted key>: <why>"."""
    raise ConfigError(f"{key}: {why}")


def one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        bad(key, f"{value!r} is not one of {', '.join(allowed)}")


# The range of every numeric key: (low, high), both allowed; a low of POSITIVE means "above 0".
# Bounds are generous (far past any paper's setting) but finite: a value past them is a typo or an
# attack (steps=10**12, a 10**9-pixel image), never an experiment, and it would fail late or never.
POSITIVE = "above 0"  # a low bound: above 0, exclusive (temperatures, rates that divide or scale)
SIZE, COUNT = 1 << 20, 10**9  # a tensor dimension; a count of rows, steps or files


def check_ranges(section: str, obj, ranges: dict) -> None:
    """Each key of `ranges` (key -> (low, high)) of `obj` (the section named `section` in dotted
    keys) is a finite number within its range; raises ConfigError naming the first that is not."""
    for key, (low, high) in ranges.items():
        value = getattr(obj, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad(f"{section}.{key}", f"{value!r} is not a number")
        if not math.isfinite(value):
            bad(f"{section}.{key}", f"{value} is not a finite number")
        above = value > 0 if low == POSITIVE else value >= low
        if not (above and value <= high):
            span = f"(0, {_num(high)}]" if low == POSITIVE else f"[{_num(low)}, {_num(high)}]"
            bad(f"{section}.{key}", f"{_num(value)} is out of range: must be in {span}")


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass
class ModelConfig:
    size: str = "tiny"
    # 0 means "take it from `size`"; any positive value overrides the named size.
    width: int = 0
    depth: int = 0
    heads: int = 0
    mlp_dim: int = 0
    text_depth: int = 0
    patch_size: int = 14
    image_size: int = 112
    # Official loader uses 1.0 for inference parity; training from scratch wants a small value
    # (DINOv2 trains with 1e-5). 0.1 lets the tiny CPU models learn within a few hundred steps.
    layerscale_init: float = 0.1
    # Image-tower MLP: "gelu", "swiglu" (the official g/14: fused w12/w3, hidden int(mlp_dim*2/3)
    # rounded up to a multiple of 8), or "auto" = swiglu for size g only, as the official code builds it.
    mlp: str = "auto"
    # Interpolation of position embeddings to other grids: bilinear + antialias, as the
    # official TIPS loader sets it.
    pos_interpolation: str = "bilinear"
    # Rows of the text tower's embedding: the hash tokenizer's buckets, or at least the size of the
    # SentencePiece vocabulary (32,000 in the paper and the official tokenizer.model).
    vocab_size: int = 4096
    max_text_len: int = 64  # as in the paper
    # "hash" (needs no training; the walking skeleton) or the path of a SentencePiece
    # tokenizer.model: the official one (released with the TIPS checkpoints) or one written by
    # `train_sentencepiece_file`.
    tokenizer: str = "hash"
    init_temperature: float = 0.07
    # DINO/iBOT projection heads (MLP -> bottleneck -> L2 norm -> prototypes). Unverified for TIPS:
    # DINOv2's defaults, 2048 hidden / 256 bottleneck (unverified for TIPS).
    head_hidden: int = 2048
    head_bottleneck: int = 256
    distill_prototypes: int = 65536  # DINOv2's DINO head (unverified for TIPS)
    mim_prototypes: int = 32768  # TIPS: "32k prototypes" for L_mim (whether 32,768 or 32,000: unverified)
    # > 0 sets both prototype counts at once (what small configs use); 0 keeps the two above.
    head_prototypes: int = 0
    # DINO's norm_last_layer: the prototypes' weight-norm gain fixed at 1 and not trained (DINO's
    # default). Learnt, the gain is the easy way for the student to score every prototype alike,
    # matching the centred teacher only on average: on the scenes L_distill and L_MIM then sat at ln K.
    head_norm_last_layer: bool = True
    # One prototype head for L_distill and L_MIM (iBOT's shared-head option) or one each. The TIPS
    # paper does not say. False, separate heads, is DINOv2's published recipe (the DINOv2 paper
    # unties the heads; its ViT-L/g train configs set `ibot.separate_head: true`, over `false` in its
    # ssl_default_config). Shared, the two prototype counts must be equal. It takes effect only when both terms are on
    # (loss.distill_weight and loss.mim_weight > 0): the one head is then `head`, in the student and
    # in the teacher (the other choice is the row ours:shared_heads of ablations/tips_losses.yaml).
    shared_heads: bool = False
    # Tag2Text tagging head (the Tag2Text paper: 2 layers, 4 heads), built only when loss.tag_weight > 0.
    num_tags: int = 0  # the tag vocabulary's size, set from the data (Tag2Text: 3,429)
    tag_layers: int = 2
    tag_heads: int = 4

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """The values of this section (the types are OmegaConf's to check); raises ConfigError."""
        check_ranges("model", self, MODEL_RANGES)
        if self.size not in SIZES:
            bad("model.size", f"unknown size {self.size!r}; known: {', '.join(SIZES)}")
        width, _, heads, _, _ = self.dims()
        if width % heads:
            bad("model.width", f"width {width} is not divisible by heads {heads}")
        if self.image_size % self.patch_size:
            bad("model.image_size", f"{self.image_size} is not a multiple of patch_size {self.patch_size}")
        one_of("model.mlp", self.mlp, MLP_KINDS)
        distill, mim = self.prototypes()
        if self.shared_heads and distill != mim:
            bad(
                "model.shared_heads",
                f"one head serves L_distill and L_MIM, so their prototype counts must be equal "
                f"(model.distill_prototypes {distill}, model.mim_prototypes {mim}; or set model.head_prototypes)",
            )

    def prototypes(self) -> tuple[int, int]:
        """(distillation, MIM) prototype counts, after `head_prototypes`."""
        if self.head_prototypes > 0:
            return self.head_prototypes, self.head_prototypes
        return self.distill_prototypes, self.mim_prototypes

    def dims(self) -> tuple[int, int, int, int, int]:
        """(width, depth, heads, mlp_dim, text_depth) after applying the named size."""
        if self.size not in SIZES:
            raise ConfigError(f"model.size: unknown size {self.size!r}; known: {sorted(SIZES)}")
        w, d, h, m = SIZES[self.size]
        w, d, h, m = self.width or w, self.depth or d, self.heads or h, self.mlp_dim or m
        text_depth = self.text_depth or TEXT_DEPTH.get(self.size, 12 if w >= 384 else d)
        return w, d, h, m, text_depth


@dataclass
class LossConfig:
    # Weight of the contrastive term. 1 in the TIPS objective; 0 drops it (and freezes the text tower),
    # which only a stage of a staged run should want: the paper does not say whether the second stage
    # of its sequential row ("CLIP first, then MIM") keeps L_clip (ablations/tips_sequential.yaml).
    clip_weight: float = 1.0
    # α and β of the TIPS objective (the TIPS paper: α = 1, β = 2). A weight of 0 removes the term,
    # its head and (when both are 0) the teacher.
    distill_weight: float = 1.0
    mim_weight: float = 2.0
    # web | synthetic | both_single_cls (a random caption per sample on CLS_1) | dual_cls
    caption_mode: str = "dual_cls"
    # Unverified in the paper: which student view the contrastive loss sees (masked | clean),
    # and which CLS token the distillation uses (cls_web | cls_synthetic; the figure suggests CLS_1).
    # clip_view's default "clean" is a tipslab choice (the other is the row ours:clip_view=masked of
    # ablations/tips_losses.yaml). "clean" costs a second student forward when MIM is on; we chose it
    # because adding MIM does not lower the paper's retrieval numbers, and because with "masked"
    # (75% of patches hidden) the tiny CPU runs lost most of their retrieval (measured: I->T R@1
    # 1.2% vs 9.0%, 256 captions).
    clip_view: str = "clean"
    distill_cls: str = "cls_web"
    # DINOv2 defaults, unverified for TIPS: student 0.1; teacher 0.04 warmed up to 0.07
    # (the end and the warm-up length are train.teacher_temp_end and train.teacher_temp_warmup_steps);
    # centre momentum 0.9.
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    # How the teacher's scores become targets, for L_distill and L_MIM alike. "mean": DINO's and
    # iBOT's centring (subtract an EMA of the batch mean, then a softmax at the teacher temperature),
    # also the `train.centering` of DINOv2's ssl_default_config; "sinkhorn_knopp": DINOv2's published
    # recipe (its paper, and `centering: sinkhorn_knopp` in its ViT-L/g train configs; 3 iterations),
    # which balances the prototypes over the whole batch instead. The TIPS paper says "centred" only;
    # the default keeps tipslab's earlier runs (the other choice is the row ours:sinkhorn of
    # ablations/tips_losses.yaml).
    centering: str = "mean"
    sinkhorn_iterations: int = 3  # DINOv2's n_iterations; used with centering: sinkhorn_knopp only
    mask_ratio: float = 0.75  # TIPS default: 75% random masking
    # random | blockwise (BEiT/iBOT rectangles); TIPS: blockwise at 75% scored the same as random.
    mask_mode: str = "random"
    # γ of L_tag (Tag2Text tagging). 0 = off: no tagging head, no computation. The tags
    # (batch["tags"], multi-hot [B, model.num_tags]) come from the data pipeline.
    tag_weight: float = 0.0
    # Tag2Text's asymmetric loss (the Tag2Text paper): γ- = 7, γ+ = 0, probability clip 0.05.
    tag_gamma_neg: float = 7.0
    tag_gamma_pos: float = 0.0
    tag_clip: float = 0.05
    # Rows of L_distill's and L_MIM's cross-entropy over the prototypes computed at once: > 0 fuses
    # the heads' prototype layer into a loss walked in chunks of this many rows, which never holds
    # the [rows, K] scores (models/prototype_loss.py), for large K on a GPU; 0 (the default) is the
    # plain loss. The two agree to rounding (the tests: 1e-6 in fp64); a tipslab setting, not the papers'.
    chunk_rows: int = 0

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        check_ranges("loss", self, LOSS_RANGES)
        one_of("loss.caption_mode", self.caption_mode, CAPTION_MODES)
        one_of("loss.distill_cls", self.distill_cls, CLS_TOKENS)
        one_of("loss.clip_view", self.clip_view, CLIP_VIEWS)
        one_of("loss.mask_mode", self.mask_mode, MASK_MODES)
        one_of("loss.centering", self.centering, CENTERINGS)
        if not 0.0 <= self.mask_ratio < 1.0:
            bad("loss.mask_ratio", "must be in [0, 1)")
        if self.clip_weight == 0 and self.distill_weight == 0 and self.mim_weight == 0 and self.tag_weight == 0:
            bad("loss.clip_weight", "0 with every other loss weight at 0 too: nothing would be trained")


# 0 for width .. text_depth, head_prototypes and num_tags: "from the size", "off", "no tags".
MODEL_RANGES = {
    **dict.fromkeys(("width", "mlp_dim"), (0, SIZE)),
    **dict.fromkeys(("depth", "heads", "text_depth"), (0, 1024)),
    "patch_size": (1, 256),
    "image_size": (1, 16384),
    "layerscale_init": (0, 100),
    "vocab_size": (1, 1 << 24),
    "max_text_len": (1, 1 << 16),
    "init_temperature": (POSITIVE, 100),
    **dict.fromkeys(("head_hidden", "head_bottleneck", "distill_prototypes", "mim_prototypes"), (1, 1 << 24)),
    **dict.fromkeys(("head_prototypes", "num_tags"), (0, 1 << 24)),
    "tag_layers": (1, 1024),
    "tag_heads": (1, 1024),
}
LOSS_RANGES = {
    **dict.fromkeys(("clip_weight", "distill_weight", "mim_weight", "tag_weight"), (0, 1e6)),  # 0 switches the term off
    **dict.fromkeys(("student_temp", "teacher_temp"), (POSITIVE, 100)),
    "center_momentum": (0, 1),
    "mask_ratio": (0, 1),  # and below 1: checked in LossConfig.check
    **dict.fromkeys(("tag_gamma_neg", "tag_gamma_pos"), (0, 100)),
    "tag_clip": (0, 1),
    "sinkhorn_iterations": (1, 1000),
    "chunk_rows": (0, COUNT),  # 0: the plain loss
}


@dataclass
class TIPSConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def mlp_kind(cfg: ModelConfig) -> str:
    """gelu or swiglu; "auto" picks SwiGLU for size g only (the TIPS paper: "g ... with SwiGLU")."""
    if cfg.mlp == "auto":
        return "swiglu" if cfg.size == "g" else "gelu"
    return cfg.mlp


def swiglu_hidden(mlp_dim: int) -> int:
    """The official fused SwiGLU's hidden width: 2/3 of the nominal MLP width, up to a multiple of 8."""
    return (int(mlp_dim * 2 / 3) + 7) // 8 * 8
