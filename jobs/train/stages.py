"""Training stages: the run's config with each stage's overrides, and weights carried between them.

TIPS trains in phases for some rows of its tables: CLIP first and the self-supervised terms after,
and a short high-resolution adaptation (224 -> 448 px) at the end. A stage starts from the last
one's student and teacher; its optimizer is new (AdamW moments belong to a loss landscape the next
stage changes) and its learning-rate, weight-decay and teacher schedules run over its own steps.
"""
import copy

import torch
from timm.layers import resample_abs_pos_embed
from tipslab.models.errors import ConfigError


def with_overrides(exp: dict, overrides: dict) -> dict:
    """A deep copy of `exp` with dotted `overrides` applied ({"loss.mim_weight": 0})."""
    out = copy.deepcopy(exp)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"train.stages: override {key!r} names no config section")
            node = node[p]
        node[last] = copy.deepcopy(value)
    return out


def stage_configs(exp: dict) -> list[tuple[str, dict]]:
    """(name, the experiment config of that stage with train.steps = the stage's steps), in order.
    No stages: one stage, "main", of train.steps."""
    stages = exp["train"].get("stages") or []
    if not stages:
        return [("main", exp)]
    out = []
    for stage in stages:
        config = with_overrides(exp, stage.get("overrides") or {})
        config["train"]["steps"] = stage["steps"]
        out.append((stage["name"], config))
    return out


def carry_weights(module: torch.nn.Module, state: dict) -> list[str]:
    """Load the entries of `state` that `module` has; position embeddings of another grid are
    resampled (bicubic over the patch grid, the class token kept). Returns the module's keys that
    `state` did not provide (new heads of this stage keep their initialisation)."""
    own = module.state_dict()
    loaded = {}
    for key, value in state.items():
        if key not in own:
            continue
        if key.endswith("pos_embed") and value.shape != own[key].shape:
            old, new = int((value.shape[1] - 1) ** 0.5), int((own[key].shape[1] - 1) ** 0.5)
            value = resample_abs_pos_embed(value, new_size=[new, new], old_size=[old, old], num_prefix_tokens=1)
        if value.shape != own[key].shape:
            raise ConfigError(f"train.stages: {key} has shape {tuple(value.shape)} in the last stage but "
                             f"{tuple(own[key].shape)} in this one; a stage may not change it")
        loaded[key] = value
    module.load_state_dict(loaded, strict=False)
    return sorted(set(own) - set(loaded))
