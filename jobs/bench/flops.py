"""The FLOP count of one TIPS training step, by component, from the experiment config alone.

Counted as the model really runs (models/tips.py, models/teacher.py, models/objective.py):

- matmul FLOPs = 2·m·n·k; attention counts its two score/value matmuls per head (4·T²·width per
  sequence); the patch embedding is a matmul of 3·p² pixels per patch.
- Student, trainable: backward = 2× forward (input gradient + weight gradient), except the patch
  embedding, whose input (the pixels) needs no gradient: its backward is 1× its forward.
- Student views: the masked global crop runs every token (masked patches are replaced by the mask
  token, not dropped); with MIM on and `loss.clip_view: clean` the clean global crop is a second full
  forward; every local crop runs (local_crop_size / patch)² patches + the two CLS tokens.
- Text tower, trainable: one pass per caption the caption mode uses (two under dual_cls), over all
  `max_text_len` positions (padding is masked, not skipped).
- Teacher: forward only, on the clean global crop, with its distillation head on one CLS and its MIM
  head on the masked patches.
- Heads: MLP (width → hidden → hidden → bottleneck) then the prototypes; the student's distillation
  head sees every local crop's CLS, its MIM head the masked patches.
- Contrastive logits: image·textᵀ and text·imageᵀ against the global batch, per caption.
- Optimizer: ≈ 16 FLOPs per trainable parameter (gradient-norm clipping 3, AdamW 13) and the EMA
  update 3 per teacher parameter. Elementwise work elsewhere (LayerNorm, GELU, softmax, the
  weight-normalised prototypes, position-embedding interpolation) is left out, as MFU counts do.
- Not counted: the Tag2Text tagging head (off by default, loss.tag_weight: 0).

`flops_per_image` is the step's total divided by the per-device batch: the figure MFU is measured
with (model FLOPs: the recomputation inside a flash-attention backward is not useful work and is
not counted).
"""

from dataclasses import dataclass

from tipslab.jobs.config import experiment
from tipslab.models.checkpoint import tips_config
from tipslab.models.config import masked_count, mlp_kind, swiglu_hidden
from tipslab.models.param_counts import param_counts

OPTIMIZER_FLOPS_PER_PARAM = 16  # clip (square, sum, scale) + AdamW (decay, two moments, sqrt, divide, update)
EMA_FLOPS_PER_PARAM = 3  # teacher · m + student · (1 − m)


@dataclass
class Part:
    """One component of the step: FLOPs per step (per device) of its forward and backward.
    `attention` is the share of `forward` spent in attention's score and value matmuls."""

    name: str
    forward: float
    backward: float = 0.0
    attention: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward


@dataclass
class Tower:
    width: int
    depth: int
    mlp_dim: int
    mlp: str  # gelu (two matrices: the text tower's ReLU MLP too) | swiglu

    def block_linear(self, tokens: int) -> float:
        """qkv, output projection and MLP matmuls of one block over `tokens` tokens."""
        w = self.width
        if self.mlp == "swiglu":
            h = swiglu_hidden(self.mlp_dim)
            mlp = 2 * tokens * w * 2 * h + 2 * tokens * h * w
        else:
            mlp = 2 * 2 * tokens * w * self.mlp_dim
        return 2 * tokens * w * 3 * w + 2 * tokens * w * w + mlp

    def block_attention(self, tokens: int) -> float:
        """Q·Kᵀ and softmax·V summed over heads (heads × head_dim = width)."""
        return 2 * 2 * tokens * tokens * self.width

    def forward(self, tokens: int) -> tuple[float, float]:
        """(linear, attention) FLOPs of one sequence through every block."""
        return self.depth * self.block_linear(tokens), self.depth * self.block_attention(tokens)


def head_flops(width: int, hidden: int, bottleneck: int, prototypes: int) -> float:
    """One row through a PrototypeHead (models/heads.py)."""
    return 2 * (width * hidden + hidden * hidden + hidden * bottleneck + bottleneck * prototypes)


@dataclass
class StepShape:
    """What one step runs, read from the experiment config."""

    batch: int  # per device
    global_batch: int  # the contrastive loss's negatives: every device's rows
    tokens_global: int  # CLS_1 + CLS_2 + patches of the global crop
    patches_global: int
    local_crops: int
    tokens_local: int
    patches_local: int
    masked: int  # masked patches per image (MIM)
    student_global_passes: int  # 1, or 2 with MIM on and a clean view for the contrastive loss
    captions: int
    text_len: int
    distill: bool
    mim: bool


def step_shape(exp, world_size: int = 1, batch_size: int | None = None) -> StepShape:
    exp = experiment(exp)
    m, loss, data = exp.model, exp.loss, exp.data
    batch = batch_size or data.batch_size
    patches = (m.image_size // m.patch_size) ** 2
    patches_local = (data.local_crop_size // m.patch_size) ** 2
    mim, distill = loss.mim_weight > 0, loss.distill_weight > 0
    return StepShape(
        batch=batch,
        global_batch=batch * world_size,
        tokens_global=patches + 2,
        patches_global=patches,
        local_crops=data.local_crops if distill else 0,
        tokens_local=patches_local + 2,
        patches_local=patches_local,
        masked=masked_count(loss.mask_ratio, patches) if mim else 0,  # as the views and synthetic_batch mask
        student_global_passes=2 if (mim and loss.clip_view == "clean") else 1,
        captions=2 if loss.caption_mode == "dual_cls" else 1,
        text_len=m.max_text_len,
        distill=distill,
        mim=mim,
    )


def step_flops(exp, world_size: int = 1, batch_size: int | None = None) -> list[Part]:
    """The components of one step on one device, FLOPs per step."""
    exp = experiment(exp)
    cfg = tips_config(exp)
    m = cfg.model
    width, depth, _, mlp_dim, text_depth = m.dims()
    s = step_shape(exp, world_size, batch_size)
    b = s.batch
    vision = Tower(width, depth, mlp_dim, mlp_kind(m))
    text = Tower(width, text_depth, mlp_dim, "gelu")
    embed = 2 * 3 * m.patch_size**2 * width  # per patch

    def trainable(name: str, forward: float, attention: float = 0.0, embed_fwd: float = 0.0) -> Part:
        # embed_fwd: the patch-embedding share of `forward`, whose backward is the weight gradient only.
        return Part(name, forward, 2 * (forward - embed_fwd) + embed_fwd, attention)

    def image_pass(n: int, tokens: int, patches: int) -> tuple[float, float, float]:
        lin, att = vision.forward(tokens)
        return n * (lin + att + embed * patches), n * att, n * embed * patches

    parts = []
    fwd, att, emb = image_pass(b * s.student_global_passes, s.tokens_global, s.patches_global)
    parts.append(trainable("student global crop", fwd, att, emb))
    if s.local_crops:
        fwd, att, emb = image_pass(b * s.local_crops, s.tokens_local, s.patches_local)
        parts.append(trainable("student local crops", fwd, att, emb))
    lin, att = text.forward(s.text_len)
    parts.append(trainable("text tower", b * s.captions * (lin + att), b * s.captions * att))
    k_distill, k_mim = m.prototypes()
    heads = 0.0
    if s.distill:
        heads += b * s.local_crops * head_flops(width, m.head_hidden, m.head_bottleneck, k_distill)
    if s.mim:
        heads += b * s.masked * head_flops(width, m.head_hidden, m.head_bottleneck, k_mim)
    if heads:
        parts.append(trainable("student heads", heads))
    # image·textᵀ and text·imageᵀ: each [b, width] × [width, global batch], per caption.
    parts.append(trainable("contrastive logits", s.captions * 2 * 2 * b * s.global_batch * width))
    if s.distill or s.mim:
        fwd, att, _ = image_pass(b, s.tokens_global, s.patches_global)
        parts.append(Part("teacher tower", fwd, 0.0, att))
        teacher_heads = 0.0
        if s.distill:
            teacher_heads += b * head_flops(width, m.head_hidden, m.head_bottleneck, k_distill)
        if s.mim:
            teacher_heads += b * s.masked * head_flops(width, m.head_hidden, m.head_bottleneck, k_mim)
        parts.append(Part("teacher heads", teacher_heads))
    params, teacher_params = trainable_params(exp)
    parts.append(Part("optimizer + EMA", OPTIMIZER_FLOPS_PER_PARAM * params + EMA_FLOPS_PER_PARAM * teacher_params))
    return parts


def trainable_params(exp) -> tuple[int, int]:
    """(trainable student parameters, teacher parameters), counted from the config."""
    counts = param_counts(experiment(exp))
    return counts.trainable, counts.teacher


def flops_per_step(exp, world_size: int = 1, batch_size: int | None = None) -> float:
    return sum(p.total for p in step_flops(exp, world_size, batch_size))


def flops_per_image(exp, world_size: int = 1, batch_size: int | None = None) -> float:
    exp = experiment(exp)
    return flops_per_step(exp, world_size, batch_size) / step_shape(exp, world_size, batch_size).batch
