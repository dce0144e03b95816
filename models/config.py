"""Configuration owned by the model layer: the towers and the objective.

Values marked "unverified" in ../shared/PAPER.md are plain defaults here, easy to override.
"""
from dataclasses import dataclass, field

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
# Text tower depth: 12 layers, 27 for So400m (PAPER.md); tiny sizes follow the image tower.
TEXT_DEPTH = {"So400m": 27}


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
    # Interpolation of position embeddings to other grids: bilinear + antialias, as the
    # official TIPS loader sets it.
    pos_interpolation: str = "bilinear"
    vocab_size: int = 4096  # hash tokenizer buckets; SentencePiece 32k in the paper
    max_text_len: int = 64  # as in the paper
    init_temperature: float = 0.07
    # DINO/iBOT projection heads. DINOv2 uses 2048 hidden / 256 bottleneck / 65,536 prototypes,
    # TIPS uses 32k prototypes for MIM (PAPER.md); these small defaults suit the tiny sizes.
    head_hidden: int = 256
    head_bottleneck: int = 64
    head_prototypes: int = 512

    def dims(self) -> tuple[int, int, int, int, int]:
        """(width, depth, heads, mlp_dim, text_depth) after applying the named size."""
        if self.size not in SIZES:
            raise ValueError(f"model.size: unknown size {self.size!r}; known: {sorted(SIZES)}")
        w, d, h, m = SIZES[self.size]
        w, d, h, m = self.width or w, self.depth or d, self.heads or h, self.mlp_dim or m
        text_depth = self.text_depth or TEXT_DEPTH.get(self.size, 12 if w >= 384 else d)
        return w, d, h, m, text_depth


@dataclass
class LossConfig:
    # α and β of the TIPS objective (PAPER.md: α = 1, β = 2). A weight of 0 removes the term,
    # its head and (when both are 0) the teacher.
    distill_weight: float = 1.0
    mim_weight: float = 2.0
    # web | synthetic | both_single_cls (a random caption per sample on CLS_1) | dual_cls
    caption_mode: str = "dual_cls"
    # Unverified in the paper: which student view the contrastive loss sees (masked | clean),
    # and which CLS token the distillation uses (cls_web | cls_synthetic; the figure suggests CLS_1).
    # "clean" costs a second student forward when MIM is on; we chose it because adding MIM does not
    # lower the paper's retrieval numbers, and because with "masked" (75% of patches hidden) the
    # tiny CPU runs lost most of their retrieval (measured: I->T R@1 1.2% vs 9.0%, 256 captions).
    clip_view: str = "clean"
    distill_cls: str = "cls_web"
    # DINOv2 defaults (unverified for TIPS).
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    mask_ratio: float = 0.75  # TIPS default: 75% random masking


@dataclass
class TIPSConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)


CAPTION_MODES = ("web", "synthetic", "both_single_cls", "dual_cls")
CLS_TOKENS = ("cls_web", "cls_synthetic")
