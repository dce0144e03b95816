"""The typed experiment config: one ExperimentConfig from a dict, a DictConfig or itself, and each
section's value checks, which name their dotted key."""

import json
import re

import pytest
from omegaconf import OmegaConf

from tipslab.jobs.config import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    TrainConfig,
    as_dict,
    eval_config,
    experiment,
)
from tipslab.models.checkpoint import tips_config
from tipslab.models.config import LossConfig, ModelConfig
from tipslab.models.errors import ConfigError

PLAIN = {
    "model": {"size": "small-cpu", "image_size": 56},
    "loss": {"mim_weight": 0.0, "caption_mode": "web"},
    "data": {"batch_size": 4, "global_crop_scale": [0.5, 1.0]},
    "train": {"steps": 3, "stages": [{"name": "a", "steps": 3, "overrides": {"loss.mim_weight": 1}}]},
    "eval": {"probes": ["knn"], "datasets": {"imagenet": "/x"}},
}


def test_a_dict_a_dictconfig_and_an_experiment_config_give_equal_typed_configs():
    from_dict = experiment(PLAIN)
    from_dictconfig = experiment(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), PLAIN))
    assert isinstance(from_dict, ExperimentConfig) and isinstance(from_dict.train.stages[0].overrides, dict)
    assert from_dict == from_dictconfig == experiment(from_dict)
    assert experiment(from_dict) is from_dict
    assert (from_dict.model.size, from_dict.data.batch_size, from_dict.eval.knn_k) == ("small-cpu", 4, 20)  # defaults
    assert experiment({}) == experiment(None) == ExperimentConfig()


def test_as_dict_is_a_plain_dict_that_gives_the_same_config_back():
    exp = experiment(PLAIN)
    plain = as_dict(exp)
    assert json.loads(json.dumps(plain)) == plain  # built-in types only
    assert type(plain["data"]["global_crop_scale"]) is list and type(plain["eval"]["datasets"]) is dict
    assert experiment(plain) == exp
    assert plain == OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), PLAIN))


def test_tips_config_reads_the_typed_config_and_a_checkpoints_dict_alike():
    exp = experiment(PLAIN)
    assert tips_config(exp) == tips_config(as_dict(exp))
    assert tips_config(exp).model.size == "small-cpu"


def test_unknown_keys_and_wrong_types_name_the_key():
    with pytest.raises(ConfigError, match=r"^model\.nonsense: "):
        experiment({"model": {"nonsense": 1}})
    with pytest.raises(ConfigError, match=r"^data\.batch_size: "):
        experiment({"data": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"^eval\.knn_k: "):
        eval_config({"knn_k": "many"})


# (dotted key, bad value): every value check of the sections and of ExperimentConfig.
BAD = [
    ("model.size", "XXL"),
    ("model.width", 65),  # not divisible by the heads
    ("model.image_size", 100),
    ("model.mlp", "relu"),
    ("loss.caption_mode", "both"),
    ("loss.distill_cls", "cls_3"),
    ("loss.clip_view", "blurred"),
    ("loss.mask_mode", "checkerboard"),
    ("loss.mask_ratio", 1.5),
    ("loss.mask_ratio", -0.1),
    ("loss.distill_weight", -1.0),
    ("loss.mim_weight", -1.0),
    ("data.batch_size", 0),
    ("data.augment", "heavy"),
    ("data.local_crop_size", 50),  # not a multiple of model.patch_size
    ("data.local_crops", 0),  # self-distillation is on by default
    ("train.strategy", "zero3"),
    ("train.steps", 0),
    ("train.num_workers", 0),
    ("train.log_every", 0),
    ("eval.retrieval_token", "cls_3"),
    ("eval.retrieval_caption", "alt_text"),
    ("eval.zero_shot_token", "auto"),
    ("eval.knn_token", "cls_3"),
    ("eval.probes", ["knn", "telepathy"]),
    # ranges (models/config.py check_ranges): positive sizes, finite rates, bounded counts and retries
    ("model.patch_size", 0),
    ("model.image_size", 0),
    ("model.heads", 10**13),
    ("model.init_temperature", 0.0),
    ("loss.student_temp", float("nan")),
    ("loss.center_momentum", 1.5),
    ("data.cpus", -1.0),
    ("data.cpus", 0.0),
    ("data.max_bad_fraction", float("inf")),
    ("data.global_crop_scale", [0.9, 0.1]),
    ("data.local_crop_scale", [0.5]),
    ("data.source", "shardz"),
    ("train.lr", float("nan")),
    ("train.lr", float("-inf")),
    ("train.steps", 10**12),
    ("train.max_failures", -1),  # Ray Train's "retry forever"
    ("train.max_failures", 10**6),
    ("train.checkpoints_to_keep", 0),
    ("train.seed", -1),
    ("eval.knn_temperature", 0.0),
    ("eval.batch_size", -4),
    ("eval.datasets", {"imagenet": ""}),
]
SECTIONS = {"model": ModelConfig, "loss": LossConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


@pytest.mark.parametrize("key, value", BAD)
def test_each_value_check_raises_a_config_error_naming_its_key(key, value):
    section, field = key.split(".")
    with pytest.raises(ConfigError, match="^" + re.escape(key) + r"(\.\w+)?: "):  # a mapping's entry: its key
        experiment({section: {field: value}})
    if key not in ("data.local_crop_size", "data.local_crops"):  # checked across sections
        with pytest.raises(ConfigError, match="^" + re.escape(key) + r"(\.\w+)?: "):
            SECTIONS[section](**{field: value})  # made directly, the section checks itself


def test_every_numeric_key_has_a_range_and_a_value_past_it_is_refused_naming_the_key():
    import types
    import typing

    from tipslab.jobs.config import DATA_RANGES, EVAL_RANGES, TRAIN_RANGES
    from tipslab.models.config import LOSS_RANGES, MODEL_RANGES, POSITIVE, check_ranges

    ranges = {"model": MODEL_RANGES, "loss": LOSS_RANGES, "data": DATA_RANGES, "train": TRAIN_RANGES}
    ranges["eval"] = EVAL_RANGES
    for section, cls in SECTIONS.items():
        numeric = {k for k, t in typing.get_type_hints(cls).items() if t in (int, float)}
        assert set(ranges[section]) == numeric, section
        for key, (_, high) in ranges[section].items():
            if key != "mask_ratio":  # [0, 1): its own message
                with pytest.raises(ConfigError, match=f"^{section}.{key}: .* is out of range: must be in "):
                    cls(**{key: high * 2 + 1})  # the section checks itself as it is made
    # both bounds allowed, except POSITIVE's 0; not finite is never in range
    for value, ok in ((0, True), (10, True), (-1, False), (11, False), (float("nan"), False), (float("inf"), False)):
        try:
            check_ranges("s", types.SimpleNamespace(k=value), {"k": (0, 10)})
        except ConfigError:
            assert not ok, value
        else:
            assert ok, value
    with pytest.raises(ConfigError, match=r"^s\.k: 0 is out of range: must be in \(0, 1\]"):
        check_ranges("s", types.SimpleNamespace(k=0), {"k": (POSITIVE, 1)})
    with pytest.raises(ConfigError, match=r"^s\.k: nan is not a finite number"):
        check_ranges("s", types.SimpleNamespace(k=float("nan")), {"k": (0, 1)})


def test_good_values_pass_and_the_defaults_are_valid():
    for cls in (*SECTIONS.values(), ExperimentConfig):
        cls()
    experiment(
        {
            "model": {"size": "g", "image_size": 224},
            "loss": {"distill_weight": 0.0, "mask_ratio": 0.0},
            "data": {"local_crops": 0},
            "train": {"strategy": "fsdp"},
            "eval": {"retrieval_token": "cls_web"},
        }
    )
