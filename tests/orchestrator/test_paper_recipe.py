"""The paper-size specs run the paper's recipe: every spec in ablations/ planned at its full size,
with the data a cluster prepares (a SentencePiece tokenizer beside the shards), and each trial's
tokenizer, schedules and views checked against the paper and DINOv2's published defaults."""

import pytest
from conftest import REPO

from tipslab.jobs.config import experiment
from tipslab.jobs.train.stages import stage_configs
from tipslab.models.tokenizer import train_sentencepiece_file
from tipslab.orchestrator.config import ConfigError, config_hash
from tipslab.orchestrator.launch import CPU_SIZES, check_launch
from tipslab.orchestrator.spec import SIZES, load_spec

SPECS = sorted((REPO / "ablations").glob("*.yaml"))
CAPTIONS = ["a red cube left of a small blue sphere", "two green cylinders on a wooden table"] * 50


def prepare(folder):
    """What a team prepares once under the specs' data root (relative to where a sweep runs): the
    tokenizer (`tipslab data tokenizer`) and the tag vocabulary (`tipslab data tags`)."""
    root = folder / "data" / "webli"
    train_sentencepiece_file(CAPTIONS, root / "tokenizer.model", vocab_size=60)
    (root / "tag_vocab.txt").write_text("red\nsquare\n")
    return root


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return prepare(tmp_path)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """(data root, {(spec stem, size): plan}) of every spec at each size it has, planned once."""
    folder = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("TIPSLAB_HOME", str(folder / "home"))
        root = prepare(folder)
        plans = {}
        for path in SPECS:
            for size in SIZES:
                try:
                    plans[path.stem, size] = load_spec(path, size=size)
                except ConfigError as err:  # a spec without that overlay
                    assert "overlay" in str(err)
        yield root, plans


def test_every_paper_size_trial_runs_the_papers_recipe(planned):
    root, plans = planned
    trials = [
        (f"{stem}/{size}", t)
        for (stem, size), plan in plans.items()
        for t in plan.trials
        if t.config["model"]["size"] not in CPU_SIZES
    ]
    assert {name.split("/")[0] for name, _ in trials} >= {
        "tips_caption_source",
        "tips_losses",
        "tips_mask_ratio",
        "tips_sequential",
        "tips_loss_weights",
        "tag2text_tags",
    }
    for name, trial in trials:
        c = trial.config
        where = f"{name} {trial.name}"
        # The paper's 32k SentencePiece vocabulary, read from beside the shards, and its file in the hash.
        assert c["model"]["tokenizer"] == str(root / "tokenizer.model"), where
        assert c["model"]["vocab_size"] == 32000, where
        # Photographs get DINOv2's views: augmentations and crop scales (8 local crops of 98 px at patch 14).
        d = c["data"]
        assert d["source"] == "shards" and d["augment"] == "dinov2", where
        assert (d["global_crop_scale"], d["local_crop_scale"]) == ([0.32, 1.0], [0.05, 0.32]), where
        assert (d["local_crops"], d["local_crop_size"]) == (8, 98), where
        # DINOv2's teacher: momentum 0.992 -> 1, temperature 0.04 -> 0.07; weight decay 0.04 -> 0.4.
        t = c["train"]
        assert (t["teacher_momentum"], t["teacher_momentum_end"]) == (0.992, 1.0), where
        assert (c["loss"]["teacher_temp"], t["teacher_temp_end"]) == (0.04, 0.07), where
        assert (t["weight_decay"], t["weight_decay_end"]) == (0.04, 0.4), where
        stages = stage_configs(c)
        assert sum(s.train.steps for _, s in stages) == t["steps"], where
        for stage, exp in stages:
            steps = exp.train.steps
            for warm in (exp.train.lr_warmup(), exp.train.teacher_temp_warmup()):
                assert 0.01 * steps <= warm <= 0.5 * steps, f"{where} stage {stage}: {warm} of {steps} steps"
    for plan in plans.values():
        check_launch(plan)  # the prepared tokenizer lets every trial start (at the CPU sizes: hash)


def test_the_b14_warmups_are_dinov2s_fractions_of_each_stage(home, prepared):
    rows = {t.variant: t for t in load_spec(REPO / "ablations" / "tips_sequential.yaml").trials}
    joint, sequential = rows["joint"], rows["clip_then_mim"]
    one = stage_configs(joint.config)
    assert [(n, e.train.lr_warmup(), e.train.teacher_temp_warmup()) for n, e in one] == [("main", 7000, 21000)]
    two = stage_configs(sequential.config)
    assert [(n, e.train.lr_warmup(), e.train.teacher_temp_warmup()) for n, e in two] == [
        ("clip", 3500, 10500),
        ("mim", 3500, 10500),
    ]
    # A shorter run keeps the shape: 2,000 steps warm up over 200 and 600.
    short = load_spec(REPO / "ablations" / "tips_losses.yaml", overrides=["train.steps=2000"]).trials[0]
    short = experiment(short.config)
    assert (short.train.lr_warmup(), short.train.teacher_temp_warmup()) == (200, 600)


def test_scenes_keep_the_scene_safe_views_at_every_size(planned):
    """The scenes' synthetic captions name colours and left/right: no flips or colour changes there."""
    plans = planned[1]
    scene_trials = [(k, t) for k, plan in plans.items() for t in plan.trials if t.config["data"]["source"] == "scenes"]
    assert {size for (_, size), _ in scene_trials} == {"full", "mini", "smoke"}  # smoke.yaml is scenes at full size
    for (stem, size), t in scene_trials:
        d = t.config["data"]
        assert d["augment"] == "none", f"{stem}/{size} {t.name}"


def test_the_tokenizer_file_is_part_of_the_config_hash(home, prepared):
    spec = REPO / "ablations" / "tips_losses.yaml"
    before = load_spec(spec).trials[0]
    check_launch(load_spec(spec))  # prepared: the sweep may start
    train_sentencepiece_file(CAPTIONS[:50] + ["a yellow torus"] * 10, prepared / "tokenizer.model", vocab_size=40)
    after = load_spec(spec).trials[0]
    assert after.config == before.config and after.config_hash != before.config_hash
    assert config_hash(before.config) == after.config_hash  # the hash reads the file as it is now


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.tokenizer=hash"],
            r"tips_losses\.yaml: variant 'clip': model\.tokenizer: 'hash' is for the CPU sizes \(tiny, small-cpu\), "
            r"not model\.size B, .*: make one with `tipslab data tokenizer .*/data/webli/train "
            r".*/data/webli/tokenizer\.model` and set model\.tokenizer",
        ),
        (
            ["data.root=elsewhere"],
            r"model\.tokenizer: no SentencePiece model at .*/elsewhere/tokenizer\.model: make it once from the "
            r"training shards' captions with `tipslab data tokenizer .*/elsewhere/train .*/elsewhere/tokenizer\.model`",
        ),
    ],
)
def test_a_paper_size_run_without_its_tokenizer_may_be_planned_but_not_started(overrides, message, home, prepared):
    plan = load_spec(REPO / "ablations" / "tips_losses.yaml", overrides=overrides)
    assert len(plan.trials) == 6  # planned: the paper's 3 rows and 3 of ours
    with pytest.raises(ConfigError, match=message) as err:
        check_launch(plan)
    assert "\n" not in str(err.value)
    check_launch(load_spec(REPO / "ablations" / "tips_losses.yaml", size="mini", overrides=["model.tokenizer=hash"]))
