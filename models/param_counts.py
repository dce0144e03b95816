"""How many parameters a TIPS student and its EMA teacher hold, from the config alone.

Nothing is built and nothing heavy is imported (no timm, which brings torchvision and
torch._dynamo: 1-2 s in a fresh process): the sweep's disk check before launch
(orchestrator/sweep.py) and the FLOP count's optimizer term (jobs/bench/flops.py) read these. The
tests check every count against the built model (models/tips.py, models/teacher.py).

- Vision tower: the patch embedding (a 3·p² -> width matrix and its bias), the two CLS tokens
  (web and synthetic captions), the position embedding of one prefix token and the patch grid, the
  blocks (LayerScale on), the final LayerNorm, and the mask token (frozen without MIM).
- Text tower: the token embedding, the blocks (no LayerScale), the final LayerNorm and the
  contrastive temperature (frozen with `loss.clip_weight: 0`, like the whole tower).
- Heads (DINO-style): width -> hidden -> hidden -> bottleneck, then weight-normalised prototypes:
  a direction per prototype and a norm, which `model.head_norm_last_layer` keeps fixed. One head
  serves both terms with `model.shared_heads`.
- Tag head (Tag2Text, `loss.tag_weight > 0`): one query per tag, cross-attention layers (BERT-style,
  post-norm), a per-tag linear output.
- Teacher: the vision tower and the heads of the terms that have a weight, all of
  them copied, frozen or not; no teacher when neither self-distillation nor MIM is on.
"""

from dataclasses import dataclass

from .checkpoint import tips_config
from .config import TIPSConfig, mlp_kind, swiglu_hidden


@dataclass(frozen=True)
class ParamCounts:
    student: int  # every parameter of the student, frozen ones included (what its state_dict holds)
    trainable: int  # the student's parameters with a gradient (what AdamW keeps two moments of)
    teacher: int  # the EMA teacher's (0 without one)


def tower_params(width: int, depth: int, mlp_dim: int, mlp: str, layerscale: bool) -> int:
    """Transformer blocks (pre-norm: two LayerNorms, qkv, projection, MLP) and the final LayerNorm."""
    w = width
    if mlp == "swiglu":
        h = swiglu_hidden(mlp_dim)
        mlp_params = w * 2 * h + 2 * h + h * w + w
    else:  # two matrices (gelu; the text tower's ReLU MLP too)
        mlp_params = w * mlp_dim + mlp_dim + mlp_dim * w + w
    block = 2 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + mlp_params + (2 * w if layerscale else 0)
    return depth * block + 2 * w


def head_params(width: int, hidden: int, bottleneck: int, prototypes: int) -> int:
    """Linear weights and biases; the weight-normalised prototypes hold a direction and a norm per
    row (the norms are counted here, trained or not)."""
    return (
        (width * hidden + hidden)
        + (hidden * hidden + hidden)
        + (hidden * bottleneck + bottleneck)
        + prototypes * bottleneck
        + prototypes
    )


def tag_head_params(width: int, num_tags: int, layers: int, mlp_dim: int) -> int:
    """Queries, cross-attention layers (q, k, v, output; two LayerNorms; a two-matrix MLP), per-tag
    output weights and biases."""
    layer = 4 * (width * width + width) + 2 * 2 * width + (width * mlp_dim + mlp_dim + mlp_dim * width + width)
    return num_tags * width + layers * layer + num_tags * width + num_tags


def param_counts(config) -> ParamCounts:
    """The parameter counts of a config: a TIPSConfig, a typed experiment config, or a mapping with
    `model` and `loss` (a resolved config's dict)."""
    cfg = config if isinstance(config, TIPSConfig) else tips_config(config)
    m, loss = cfg.model, cfg.loss
    width, depth, _, mlp_dim, text_depth = m.dims()
    grid = (m.image_size // m.patch_size) ** 2
    vision = (
        (3 * m.patch_size**2 * width + width)
        + 2 * width
        + (1 + grid) * width
        + tower_params(width, depth, mlp_dim, mlp_kind(m), layerscale=True)
    )
    mim = loss.mim_weight > 0
    text = m.vocab_size * width + tower_params(width, text_depth, mlp_dim, "gelu", layerscale=False) + 1
    k_distill, k_mim = m.prototypes()
    counts = [k for k, weight in ((k_distill, loss.distill_weight), (k_mim, loss.mim_weight)) if weight > 0]
    if m.shared_heads and len(counts) == 2:
        counts = counts[:1]  # one head serves both terms (models/tips.py)
    heads = sum(head_params(width, m.head_hidden, m.head_bottleneck, k) for k in counts)
    frozen_gains = sum(counts) if m.head_norm_last_layer else 0
    tags = tag_head_params(width, m.num_tags, m.tag_layers, mlp_dim) if loss.tag_weight > 0 else 0
    vision += width  # the mask token
    student = vision + text + heads + tags
    frozen = (0 if mim else width) + (0 if loss.clip_weight > 0 else text) + frozen_gains
    teacher = vision + heads if counts else 0
    return ParamCounts(student=student, trainable=student - frozen, teacher=teacher)
