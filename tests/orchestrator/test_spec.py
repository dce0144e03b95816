import pytest
from conftest import REPO

from tipslab.orchestrator.errors import ConfigError
from tipslab.orchestrator.spec import load_spec

SMOKE = REPO / "ablations" / "smoke.yaml"
BASE = REPO / "ablations" / "base" / "tips_tiny.yaml"


def spec_file(tmp_path, body: str):
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: t\nbase: {BASE}\n" + body)
    return path


def test_smoke_spec_gives_one_trial_per_variant_and_seed(home):
    plan = load_spec(SMOKE, smoke=True)
    assert [t.name for t in plan.trials] == ["mim_off-seed0", "mim_on-seed0"]
    off, on = plan.trials
    assert off.config["loss"]["mim_weight"] == 0 and on.config["loss"]["mim_weight"] > 0
    assert off.config_hash != on.config_hash
    assert plan.size == "smoke" and [m["key"] for m in plan.spec["metrics"]][0] == "eval/scenes/i2t_r1"


def test_smoke_overlay_replaces_seeds_resources_and_overrides(tmp_path, home):
    path = spec_file(tmp_path, """
overrides: {train.steps: 1000}
variants: {a: {}, b: {loss.distill_weight: 0}}
seeds: [0]
metrics: [{key: eval/scenes/seg_miou}]
resources: {workers_per_trial: 8, gpus_per_worker: 1}
smoke:
  overrides: {train.steps: 5}
  resources: {workers_per_trial: 1, gpus_per_worker: 0}
  seeds: [0, 1, 2]
""")
    full, smoke = load_spec(path), load_spec(path, smoke=True)
    assert len(full.trials) == 2 and full.trials[0].config["train"]["num_workers"] == 8
    assert full.trials[0].config["train"]["steps"] == 1000
    assert len(smoke.trials) == 6 and {t.seed for t in smoke.trials} == {0, 1, 2}
    assert all(t.config["train"]["steps"] == 5 and t.config["train"]["num_workers"] == 1 for t in smoke.trials)
    assert all(t.config["train"]["seed"] == t.seed for t in smoke.trials)
    assert smoke.trials[0].config_hash != smoke.trials[1].config_hash  # seeds differ


def test_command_line_overrides_reach_every_trial(home):
    plan = load_spec(SMOKE, smoke=True, overrides=["train.steps=3"])
    assert {t.config["train"]["steps"] for t in plan.trials} == {3}


@pytest.mark.parametrize("body, message", [
    ("variants: {a: {loss.mim_wieght: 0}}\n", r"spec\.yaml: variants\.a: loss\.mim_wieght"),
    ("variants: {a: {}}\nmetrics: [{key: eval/nyuv2/depth_rmse}]\n", r"metrics\[0\]\.key: no probe produces"),
    ("variants: {a: {}}\nbaseline: b\n", r"baseline: 'b' is not one of the variants"),
    ("variants: {a: {}}\nreference: {source: x, b: {eval/scenes/i2t_r1: 1}}\n", r"reference\.b: no such variant"),
    ("variants: {a: {}}\nmetrics: [{key: eval/scenes/i2t_r1, goal: up}]\n", r"metrics\[0\]\.goal"),
    ("variants: {a: {}}\ncolour: red\n", r"spec\.yaml: colour"),
    ("variants: {}\n", r"variants: a spec needs at least one variant"),
    ("variants: {a: {}}\nseeds: []\n", r"seeds: at least one seed"),
    ("variants: {a: {}}\nresources: {workers_per_trial: two}\n", r"resources\.workers_per_trial"),
])
def test_spec_mistakes_name_the_file_and_key(tmp_path, home, body, message):
    with pytest.raises(ConfigError, match=message):
        load_spec(spec_file(tmp_path, body))


def test_spec_needs_name_and_base(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("variants: {a: {}}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: name: missing"):
        load_spec(path)
