"""Training stages: the run's config with each stage's overrides, and weights carried between them.

TIPS trains in phases for some rows of its tables: CLIP first and the self-supervised terms after,
and a short high-resolution adaptation (224 -> 448 px) at the end. A stage starts from the last
one's student and teacher; its optimizer is new (AdamW moments belong to a loss landscape the next
stage changes) and its learning-rate, weight-decay and teacher schedules run over its own steps.
"""

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tipslab.jobs.config import ExperimentConfig, experiment
from tipslab.models.errors import ConfigError


def with_overrides(exp, overrides: dict) -> ExperimentConfig:
    """A new ExperimentConfig: `exp` with dotted `overrides` applied ({"loss.mim_weight": 0}),
    merged onto the typed config (so checked against its types and values)."""
    cfg = OmegaConf.structured(experiment(exp))
    for key, value in overrides.items():
        *parents, _ = key.split(".")
        if not parents or not isinstance(OmegaConf.select(cfg, ".".join(parents)), DictConfig):
            raise ConfigError(f"train.stages: override {key!r} names no config section")
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as err:
            msg = str(getattr(err, "msg", err)).splitlines()[0]
            raise ConfigError(f"train.stages: override {key!r}: {msg}") from None
    return OmegaConf.to_object(cfg)


def stage_configs(exp) -> list[tuple[str, ExperimentConfig]]:
    """(name, the experiment config of that stage with train.steps = the stage's steps), in order.
    No stages: one stage, "main", of train.steps."""
    exp = experiment(exp)
    if not exp.train.stages:
        return [("main", exp)]
    out = []
    for stage in exp.train.stages:
        config = with_overrides(exp, stage.overrides)
        config.train.steps = stage.steps
        out.append((stage.name, config))
    return out


def carry_weights(module: torch.nn.Module, state: dict) -> list[str]:
    """Load the entries of `state` that `module` has; position embeddings of another grid are
    resampled (bicubic over the patch grid, the class token kept). Returns the module's keys that
    `state` did not provide (new heads of this stage keep their initialisation)."""
    from timm.layers import resample_abs_pos_embed  # timm brings torchvision: imported where it is used

    own = module.state_dict()
    loaded = {}
    for key, value in state.items():
        if key not in own:
            continue
        if key.endswith("pos_embed") and value.shape != own[key].shape:
            old, new = int((value.shape[1] - 1) ** 0.5), int((own[key].shape[1] - 1) ** 0.5)
            value = resample_abs_pos_embed(value, new_size=[new, new], old_size=[old, old], num_prefix_tokens=1)
        if value.shape != own[key].shape:
            raise ConfigError(
                f"train.stages: {key} has shape {tuple(value.shape)} in the last stage but "
                f"{tuple(own[key].shape)} in this one; a stage may not change it"
            )
        loaded[key] = value
    module.load_state_dict(loaded, strict=False)
    return sorted(set(own) - set(loaded))
