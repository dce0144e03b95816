"""The Ray cluster launcher config, checked by Ray's own validation as `ray up` runs it: the
provider's defaults filled in (`prepare_config`), then the config schema of the installed Ray
(`validate_config`, ray/autoscaler/ray-schema.json). Nothing is launched."""

import copy

import pytest
import yaml
from conftest import REPO
from jsonschema import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = REPO / "infra" / "ray" / "cluster.yaml"


def validated(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_config_passes_rays_validation_with_gpu_and_data_groups():
    config = yaml.safe_load(CLUSTER.read_text())
    prepared = validated(config)
    types = prepared["available_node_types"]
    assert set(types) == {"head", "gpu_worker", "data_worker"} and prepared["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0} and types["head"]["max_workers"] == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1 and "GPU" not in types["data_worker"]["resources"]
    for group in ("gpu_worker", "data_worker"):
        assert 0 <= types[group]["min_workers"] <= types[group]["max_workers"]
    assert prepared["max_workers"] == types["gpu_worker"]["max_workers"] + types["data_worker"]["max_workers"]
    assert prepared["docker"]["image"].endswith("/tipslab:0.1.0")
    # Token authentication on every node, with no secret in the file.
    for command in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]:
        assert "ray start" not in command or "RAY_AUTH_MODE=token ray start" in command
    text = CLUSTER.read_text()
    assert "aws_secret_access_key" not in text.lower() and "AWS_ACCESS_KEY_ID" not in text


def test_rays_validation_rejects_a_misspelled_field():
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["gpu_worker"]["max_worker"] = 4  # meant max_workers
    with pytest.raises(ValidationError, match="'max_worker' was unexpected"):
        validated(config)
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["gpu_worker"]["min_workers"] = 20  # more than the cluster's max_workers
    with pytest.raises(ValueError, match="max_workers"):
        validated(config)
