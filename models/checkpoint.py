"""tipslab checkpoints: one `model.pt` holding everything needed to resume or to evaluate.

The tokenizer's state and the resolved config travel inside, so a checkpoint is self-contained.
Files are written to a temporary name and moved into place, never left half-written.

A checkpoint is data only: tensors and plain values (dicts, lists, strings, numbers, bytes). It is
read with `torch.load(weights_only=True)`, whose unpickler builds nothing else, so a checkpoint that
someone crafted to run code when unpickled (teams share checkpoints through buckets and links) is
refused without running anything.
"""

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from .config import LossConfig, ModelConfig, TIPSConfig
from .errors import DataError
from .tokenizer import tokenizer_from_state

CHECKPOINT_FILE = "model.pt"


def save_checkpoint(directory: str | os.PathLike, state: dict) -> Path:
    """state: student, teacher, objective, optimizer (state dicts), step, config, tokenizer."""
    path = Path(directory) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def numpy_scalars() -> list:
    """numpy scalars (plain numbers; checkpoints written before 2026-12-05 hold a learning rate as
    one): rebuilt from a dtype and its bytes, nothing else."""
    multiarray = getattr(np, "_core", None) or np.core
    kinds = (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)
    return [multiarray.multiarray.scalar, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """The contents of a `model.pt`, as data only (module docstring); a file holding anything else
    is a DataError naming it."""
    try:
        # torch warns about a file's pickle protocol on its way to refusing it: the refusal says it all
        with torch.serialization.safe_globals(numpy_scalars()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as err:  # torch's reader: not a file torch.save wrote (truncated, another format)
        raise DataError(f"{path}: not a checkpoint file ({str(err).splitlines()[0][:200]})") from None
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{path}: refused: a tipslab checkpoint holds only tensors and plain values, and this "
            f"file holds something else that loading would build or run ({reason[:200]}); "
            "load only checkpoints from a source you trust, and only with code that builds no objects"
        ) from None


def load_state(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tipslab checkpoint at {path}")
    return read_checkpoint(path)


def student_weights(state, where) -> dict:
    """The student's state dict of a checkpoint's contents, refused (a DataError naming `where`, the
    file, and the weight) where a weight holds NaN or Inf: every output would be NaN. Training stops
    on a non-finite loss before it saves, so such a file was damaged or made elsewhere."""
    weights = state.get("student") if isinstance(state, Mapping) else None
    if not isinstance(weights, Mapping) or not weights:
        raise DataError(f"{where}: not a tipslab checkpoint (it holds no student weights)")
    for name, tensor in weights.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DataError(f"{where}: the student's weight {name!r} holds non-finite values (NaN or Inf)")
    return dict(weights)


def tips_config(config) -> TIPSConfig:
    """The model part of a resolved experiment config, typed: `config` is a typed config with
    `model` and `loss` sections (the jobs layer's ExperimentConfig, a TIPSConfig) or a mapping (a
    checkpoint's plain dict, a DictConfig)."""
    if not isinstance(config, Mapping):
        return TIPSConfig(model=config.model, loss=config.loss)
    return TIPSConfig(
        model=OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), config["model"])),
        loss=OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LossConfig), config["loss"])),
    )


def load_student(directory: str | os.PathLike):
    """(student in eval mode, tokenizer, resolved experiment config) from a checkpoint folder."""
    from .tips import TIPSStudent  # the model stack (timm): not for a checkpoint's reader alone

    state = load_state(directory)
    weights = student_weights(state, Path(directory) / CHECKPOINT_FILE)
    student = TIPSStudent(tips_config(state["config"]))
    student.load_state_dict(weights)
    return student.eval(), tokenizer_from_state(state["tokenizer"]), state["config"]
