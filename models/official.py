"""Interop with the official TIPS checkpoints (google-deepmind/tips): one `.npz` per tower.

The image tower's names are DINOv2's and mostly ours already; the text tower's are OpenCLIP-like
(`transformer.resblocks.{i}.ln_1`, an `nn.MultiheadAttention` with a packed `in_proj_weight` in the
same q, k, v order as timm's `qkv`). The text file also holds `temperature`, the value itself; we
store its log. Everything here is renaming plus that one exp/log: no tensor is reshaped.

What the arrays cannot say is the number of attention heads: `import_official` takes it from the
size table (the entry whose width matches, official sizes first), or from the `heads` argument.
"""

import copy
import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CHECKPOINT_FILE, load_state, save_checkpoint, student_weights, tips_config
from .config import SIZES, ModelConfig
from .errors import DataError
from .official_checks import check_blocks, check_layout, check_values
from .text import TextTower
from .tips import TIPSStudent
from .tokenizer import build_tokenizer
from .vision import VisionTower, swiglu_hidden

OFFICIAL_SIZES = ("S", "B", "L", "So400m", "g")

# ours -> official, inside one block (`blocks.{i}.` here, `transformer.resblocks.{i}.` there).
_TEXT_BLOCK = {
    "norm1": "ln_1",
    "attn.qkv.weight": "attn.in_proj_weight",
    "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj": "attn.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_TEXT_TOP = {"embedding": "token_embedding", "norm": "ln_final"}
_VISION_TOP = {"register_token": "register_tokens"}
_SWIGLU_BLOCK = {"mlp.fc1": "mlp.w12", "mlp.fc2": "mlp.w3"}
_BLOCK = re.compile(r"^(blocks|transformer\.resblocks)\.(\d+)\.(.+)$")


def _rename(name: str, block_prefix: str, in_block: dict, top: dict) -> str:
    """Apply the first table entry that equals `name` (or is a dotted prefix of it)."""
    m = _BLOCK.match(name)
    rest, table = (m.group(3), in_block) if m else (name, top)
    for src, dst in table.items():
        if rest == src or rest.startswith(src + "."):
            rest = dst + rest[len(src) :]
            break
    return f"{block_prefix}.{m.group(2)}.{rest}" if m else rest


def _inverse(table: dict) -> dict:
    return {v: k for k, v in table.items()}


def _is_swiglu(vision_state: dict) -> bool:
    # Our SwiGLU fc1 holds both halves, so it is twice as wide as fc2's input; a plain MLP's is not.
    # The official fused layer is recognised by its own name.
    if "blocks.0.mlp.w12.weight" in vision_state:
        return True
    fc1, fc2 = vision_state.get("blocks.0.mlp.fc1.weight"), vision_state.get("blocks.0.mlp.fc2.weight")
    return fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]


def official_state(vision_state: dict, text_state: dict) -> tuple[dict, dict]:
    """Our tower state dicts -> the official names (tensors kept as they are, so meta tensors work)."""
    block = _SWIGLU_BLOCK if _is_swiglu(vision_state) else {}
    vision = {_rename(k, "blocks", block, _VISION_TOP): v for k, v in vision_state.items()}
    text = {}
    for k, v in text_state.items():
        if k == "log_temperature":
            text["temperature"] = v.detach().exp()
        else:
            text[_rename(k, "transformer.resblocks", _TEXT_BLOCK, _TEXT_TOP)] = v
    return vision, text


def tower_states(vision_arrays, text_arrays) -> tuple[dict, dict]:
    """Official arrays (name -> array) -> our tower state dicts (float32 tensors)."""
    block = _inverse(_SWIGLU_BLOCK) if _is_swiglu(vision_arrays) else {}
    vision = {_rename(k, "blocks", block, _inverse(_VISION_TOP)): _tensor(v) for k, v in vision_arrays.items()}
    text = {}
    for k, v in text_arrays.items():
        if k == "temperature":
            text["log_temperature"] = torch.tensor(math.log(float(v)), dtype=torch.float32)
        else:
            text[_rename(k, "blocks", _inverse(_TEXT_BLOCK), _inverse(_TEXT_TOP))] = _tensor(v)
    return vision, text


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _arrays(source, tower: str) -> tuple[str, dict]:
    """(what to call it in a message, name -> array) of an `.npz` path or an already loaded mapping."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no official TIPS checkpoint at {path}")
        return str(path), read_npz(path)
    return f"the {tower} tower", dict(source)


def read_npz(path: Path) -> dict:
    """The arrays of an `.npz`, each member's header checked against the bytes it holds before it is
    read: numpy allocates what a header declares, so 200 bytes declaring 381 GiB would otherwise end
    in a MemoryError. Anything unreadable is a DataError naming the file (and the array)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(f)
                declared = math.prod(shape) * dtype.itemsize
                if dtype.hasobject or declared > info.file_size:
                    raise DataError(
                        f"{path}: array {info.filename!r} declares {shape} of {dtype} ({declared} bytes) "
                        f"but holds {info.file_size} bytes: not an official TIPS checkpoint"
                    )
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz ({str(err).splitlines()[0][:200]})") from None


def infer_model_fields(
    vision_arrays: dict, text_arrays: dict, heads: int | None = None, labels=("the vision tower", "the text tower")
) -> dict:
    """ModelConfig fields for official arrays: size, width, depth, heads, mlp_dim, mlp, text_depth,
    patch_size, image_size (the position-embedding grid x patch: 224 for TIPSv1, 448 for TIPSv2),
    vocab_size, layerscale_init (1.0, as the official loader). labels: the towers' names in messages."""

    def count(arrays, pattern):
        return len({m.group(1) for k in arrays if (m := re.match(pattern, k))})

    vision_mlp = "blocks.0.mlp.w3.weight" if "blocks.0.mlp.w12.weight" in vision_arrays else "blocks.0.mlp.fc1.weight"
    read = {  # the arrays whose shapes say the fields
        "vision": (vision_arrays, labels[0], ("cls_token", "pos_embed", "patch_embed.proj.weight", vision_mlp)),
        "text": (text_arrays, labels[1], ("token_embedding.weight", "transformer.resblocks.0.mlp.c_fc.weight")),
    }
    for name, (arrays, label, keys) in read.items():
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise DataError(f"{label}: no {', '.join(map(repr, missing))}: not an official TIPS {name} tower")
    width = vision_arrays["cls_token"].shape[-1]
    vocab_size, text_width = text_arrays["token_embedding.weight"].shape
    if text_width != width:
        raise DataError(f"text width {text_width} differs from image width {width}; tipslab ties them")
    depth = count(vision_arrays, r"blocks\.(\d+)\.")
    text_depth = count(text_arrays, r"transformer\.resblocks\.(\d+)\.")
    mlp_dim = text_arrays["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    swiglu = "blocks.0.mlp.w12.weight" in vision_arrays
    if swiglu:
        vision_hidden, expected = vision_arrays["blocks.0.mlp.w3.weight"].shape[1], swiglu_hidden(mlp_dim)
    else:
        vision_hidden, expected = vision_arrays["blocks.0.mlp.fc1.weight"].shape[0], mlp_dim
    if vision_hidden != expected:
        raise DataError(
            f"image MLP hidden width {vision_hidden} does not follow from the text MLP width "
            f"{mlp_dim} (expected {expected}); tipslab uses one model.mlp_dim for both towers"
        )
    grid = math.isqrt(vision_arrays["pos_embed"].shape[1] - 1)
    patch_size = vision_arrays["patch_embed.proj.weight"].shape[-1]
    by_width = [s for s in (*OFFICIAL_SIZES, *(s for s in SIZES if s not in OFFICIAL_SIZES)) if SIZES[s][0] == width]
    if heads is None:
        if not by_width:
            raise DataError(f"width {width} matches no size in the table; pass the number of heads")
        heads = SIZES[by_width[0]][2]
    exact = [s for s in by_width if SIZES[s] == (width, depth, heads, mlp_dim)]
    size = exact[0] if exact else (by_width[0] if by_width else "tiny")
    return {
        "size": size,
        "width": width,
        "depth": depth,
        "heads": heads,
        "mlp_dim": mlp_dim,
        "mlp": "swiglu" if swiglu else "gelu",
        "text_depth": text_depth,
        "patch_size": patch_size,
        "image_size": grid * patch_size,
        "vocab_size": vocab_size,
        "layerscale_init": 1.0,
    }


def expected_arrays(fields: dict) -> tuple[dict, dict]:
    """name -> shape of the official vision and text arrays for ModelConfig fields (built on the meta
    device: no memory, no time)."""
    cfg = ModelConfig(**fields)
    with torch.device("meta"):
        vision, text = official_state(VisionTower(cfg).state_dict(), TextTower(cfg).state_dict())
    return {k: tuple(v.shape) for k, v in vision.items()}, {k: tuple(v.shape) for k, v in text.items()}


def import_official(vision_npz, text_npz, heads: int | None = None) -> tuple[dict, dict, dict]:
    """(vision state, text state, ModelConfig fields) from the official `{name}_vision.npz` and
    `{name}_text.npz` (paths, or loaded name -> array mappings). Towers that are not complete, finite
    official towers are refused (models/official_checks.py)."""
    towers = {"vision": _arrays(vision_npz, "vision"), "text": _arrays(text_npz, "text")}
    for tower, (label, arrays) in towers.items():
        check_values(label, arrays)
        check_blocks(label, arrays, tower)
    (vision_label, vision_arrays), (text_label, text_arrays) = towers.values()
    fields = infer_model_fields(vision_arrays, text_arrays, heads, (vision_label, text_label))
    for (tower, (label, arrays)), expected in zip(towers.items(), expected_arrays(fields)):
        check_layout(label, arrays, expected, tower, fields)
    vision, text = tower_states(vision_arrays, text_arrays)
    return vision, text, fields


def _split_student(source) -> tuple[dict, dict]:
    if isinstance(source, torch.nn.Module):
        return source.vision.state_dict(), source.text.state_dict()
    vision = {k[len("vision.") :]: v for k, v in source.items() if k.startswith("vision.")}
    text = {k[len("text.") :]: v for k, v in source.items() if k.startswith("text.")}
    if not vision or not text:
        raise DataError("expected a student state dict with 'vision.' and 'text.' entries")
    return vision, text


def _write_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def export_official(source, prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write `{prefix}_vision.npz` and `{prefix}_text.npz` in the official layout (float32).

    source: a student (anything with `.vision` and `.text` towers) or its state dict. Heads of the
    objective are not part of the official format and are left out."""
    vision_state, text_state = _split_student(source)
    vision, text = official_state(vision_state, text_state)
    paths = Path(f"{prefix}_vision.npz"), Path(f"{prefix}_text.npz")
    for path, state in zip(paths, (vision, text)):
        _write_npz(path, {k: v.detach().cpu().float().numpy() for k, v in state.items()})
    return paths


def import_checkpoint(
    vision_npz,
    text_npz,
    out_dir: str | os.PathLike,
    base_config: dict,
    tokenizer_state: dict | None = None,
    heads: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a tipslab checkpoint (models/checkpoint.py) holding official weights.

    base_config: a full experiment config dict; its `model` section gets the inferred fields. The
    objective's heads (not in the official files) are freshly initialised from `seed`; there is no
    teacher, optimizer or objective state, and `step` is 0. tokenizer_state defaults to the tokenizer
    that the config's `model.tokenizer` names ("hash" over the imported vocabulary, or a tokenizer.model)."""
    vision, text, fields = import_official(vision_npz, text_npz, heads)
    config = copy.deepcopy(base_config)
    config.setdefault("model", {}).update(fields)
    torch.manual_seed(seed)
    student = TIPSStudent(tips_config(config))
    try:
        student.vision.load_state_dict(vision)
        student.text.load_state_dict(text)
    except RuntimeError as err:  # names or shapes the official layout does not explain
        raise DataError(f"{vision_npz}, {text_npz}: not loadable as TIPS towers: {err}") from None
    state = {
        "student": student.state_dict(),
        "teacher": None,
        "objective": None,
        "optimizer": None,
        "step": 0,
        "config": config,
        "tokenizer": tokenizer_state if tokenizer_state is not None else build_tokenizer(config["model"]).state(),
        "imported_from": [str(vision_npz), str(text_npz)],
    }
    return save_checkpoint(out_dir, state)


def export_checkpoint(checkpoint_dir: str | os.PathLike, prefix: str | os.PathLike) -> tuple[Path, Path]:
    """The student of a tipslab checkpoint as official `{prefix}_vision.npz` / `{prefix}_text.npz`."""
    weights = student_weights(load_state(checkpoint_dir), Path(checkpoint_dir) / CHECKPOINT_FILE)
    return export_official(weights, prefix)
