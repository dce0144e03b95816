"""tipslab checkpoints: one `model.pt` holding everything needed to resume or to evaluate.

The tokenizer's state and the resolved config travel inside, so a checkpoint is self-contained.
Files are written to a temporary name and moved into place, never left half-written.
"""

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .config import LossConfig, ModelConfig, TIPSConfig
from .tips import TIPSStudent
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


def load_state(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tipslab checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


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
    state = load_state(directory)
    student = TIPSStudent(tips_config(state["config"]))
    student.load_state_dict(state["student"])
    return student.eval(), tokenizer_from_state(state["tokenizer"]), state["config"]
