"""The recipe card: every setting of each row of a spec with where its value comes from."""

import json

import pytest
from conftest import REPO

from tipslab.jobs.config import ExperimentConfig, as_dict
from tipslab.orchestrator.config import read_yaml
from tipslab.orchestrator.recipe import LEGEND, SOURCES, format_recipe, recipe, settings, source
from tipslab.orchestrator.spec import SIZES, load_spec

SPECS = sorted((REPO / "ablations").glob("*.yaml"))
SIZED = [(p, size) for p in SPECS for size in SIZES if size == "full" or size in read_yaml(p)]


def test_every_config_key_has_a_source():
    """A key added to a config dataclass needs its source here (orchestrator/recipe.py SOURCES)."""
    keys = set(settings(as_dict(ExperimentConfig())))
    assert sorted(keys - set(SOURCES)) == [], "config keys without a source in orchestrator/recipe.py SOURCES"
    assert sorted(set(SOURCES) - keys) == [], "sources of keys the configs no longer have"


@pytest.fixture
def cluster_data(tmp_path, monkeypatch):
    """Full specs name data a cluster has (relative to where they run): placeholders stand in."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "webli").mkdir(parents=True)
    (tmp_path / "data" / "webli" / "tag_vocab.txt").write_text("red\nsquare\n")


@pytest.mark.parametrize("spec, size", SIZED, ids=[f"{p.stem}-{s}" for p, s in SIZED])
def test_every_spec_has_a_card_and_every_full_size_key_names_a_source(spec, size, home, cluster_data):
    card = recipe(load_spec(spec, size=size))
    rows = list(dict.fromkeys(t.variant for t in load_spec(spec, size=size).trials))
    assert card["rows"] == rows and len(card["keys"]) > 40
    sources = {c["source"] for cells in card["keys"].values() for c in cells.values()}
    assert sources <= set(LEGEND)
    if size == "full":
        unsourced = [k for k, cells in card["keys"].items() if any(c["source"] == "?" for c in cells.values())]
        assert unsourced == [], f"{spec.name}: keys of the card without a source"
    text = format_recipe(card)
    assert text.startswith(f"## recipe of {card['spec']} ({size})") and "sources:" in text


def test_the_losses_card_says_which_values_are_the_papers_and_which_are_guesses(home, cluster_data):
    card = recipe(load_spec(REPO / "ablations" / "tips_losses.yaml"))
    keys = card["keys"]
    assert {r: c["source"] for r, c in keys["loss.distill_weight"].items()} == {
        "clip": "spec",  # the row's own setting, written in the spec
        "clip+distill": "TIPS",  # α = 1
        "clip+distill+mim": "TIPS",
        **{row: "TIPS" for row in ("ours:clip_view=masked", "ours:sinkhorn", "ours:shared_heads")},
    }
    assert keys["loss.centering"]["ours:sinkhorn"] == {"value": "sinkhorn_knopp", "source": "DINOv2"}
    assert keys["loss.mim_weight"]["clip+distill+mim"] == {"value": 2.0, "source": "TIPS"}
    assert keys["data.local_crops"]["clip"] == {"value": 8, "source": "DINOv2"}
    assert keys["train.weight_decay"]["clip"]["source"] == "DINOv2" and keys["train.lr"]["clip"]["source"] == "ours"
    assert "data.cpus" not in keys and "train.log_every" not in keys  # "run" keys the rows share
    text = format_recipe(card)
    assert "| loss.mim_weight" in text and "0.0 [spec] | 0.0 [spec] | 2.0 [TIPS] | 2.0 [TIPS]" in text
    assert "  DINOv2    DINOv2's published defaults" in text


def test_values_the_registry_does_not_list_are_the_specs_and_unknown_keys_have_none():
    assert source("loss.mask_ratio", 0.75) == "TIPS" and source("loss.mask_ratio", 0.5) == "spec"
    assert source("data.global_crop_scale", [0.32, 1]) == "DINOv2"  # lists and ints compare as values
    assert (
        source("model.tokenizer", "/data/spm/tokenizer.model") == "TIPS" and source("model.tokenizer", "hash") == "ours"
    )
    assert source("model.brand_new_key", 1) == "?"


def test_a_sweep_logs_its_card_on_the_parent_run(tmp_path, home):
    from mlflow.tracking import MlflowClient

    from tipslab.orchestrator.tracking import SweepTracker

    plan = load_spec(REPO / "ablations" / "smoke.yaml", smoke=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, plan)
    client = MlflowClient(uri)
    assert {"recipe.md", "recipe.json", "spec.json"} <= {a.path for a in client.list_artifacts(tracker.parent_id)}
    (tmp_path / "r").mkdir()
    text = open(client.download_artifacts(tracker.parent_id, "recipe.md", str(tmp_path / "r"))).read()
    card = json.load(open(client.download_artifacts(tracker.parent_id, "recipe.json", str(tmp_path / "r"))))
    assert text.startswith("## recipe of smoke (smoke)") and "| loss.mim_weight" in text
    assert card["rows"] == ["mim_off", "mim_on"] and card["keys"]["loss.mim_weight"]["mim_on"]["source"] == "ours"
