"""Training in stages: CLIP only, then with MIM at a higher resolution, on one worker."""

import pytest
import torch
from conftest import REPO, tiny_overrides
from timm.layers import resample_abs_pos_embed

from tipslab.jobs.config import experiment
from tipslab.jobs.data.pipeline.prepare import ensure_scenes
from tipslab.jobs.train.stages import stage_configs
from tipslab.jobs.train.trainer import build_trainer
from tipslab.models.checkpoint import load_state
from tipslab.models.errors import ConfigError
from tipslab.orchestrator.config import load_experiment, to_dict

BASE = REPO / "ablations" / "base" / "tips_tiny.yaml"


def test_clip_then_mim_starts_from_the_first_stages_weights(ray_session, home):
    # Stage 2 runs at lr 0, so its student can only hold what stage 1 left (resampled to 140 px).
    stages = (
        "[{name: clip, steps: 2, overrides: {loss.distill_weight: 0, loss.mim_weight: 0}},"
        " {name: mim, steps: 2, overrides: {loss.distill_weight: 0.1, loss.mim_weight: 0.2,"
        " train.lr: 0, train.min_lr: 0, model.image_size: 140}}]"
    )
    config = to_dict(
        load_experiment(
            BASE,
            tiny_overrides(
                **{
                    "train.stages": stages,
                    "train.checkpoint_every": 1,
                    "train.log_every": 1,
                    "train.checkpoints_to_keep": 4,
                }
            ),
        )
    )
    ensure_scenes(config)
    assert config["train"]["steps"] == 4
    result = build_trainer(config, name="stages", storage_path=str(home / "ray")).fit()
    history = result.metrics_dataframe.set_index("step")
    assert list(history.index) == [1, 2, 3, 4] and list(history["train/stage"]) == [0, 0, 1, 1]
    assert history.loc[[1, 2], "train/mim"].isna().all() and history.loc[[3, 4], "train/mim"].notna().all()
    assert (history.loc[[3, 4], "train/lr"] == 0).all()
    states = {}
    for checkpoint, _ in result.best_checkpoints:
        with checkpoint.as_directory() as d:
            state = load_state(d)
        states[state["step"]] = state
    clip, mim = states[2], states[4]
    assert clip["config"]["model"]["image_size"] == 112 and mim["config"]["model"]["image_size"] == 140
    assert clip["teacher"] is None and mim["teacher"] is not None and (mim["stage"], mim["stage_step"]) == (1, 2)
    shared = [k for k in clip["student"] if k != "vision.pos_embed"]
    assert all(torch.equal(clip["student"][k], mim["student"][k]) for k in shared)
    grid = resample_abs_pos_embed(
        clip["student"]["vision.pos_embed"], new_size=[10, 10], old_size=[8, 8], num_prefix_tokens=1
    )
    assert torch.equal(mim["student"]["vision.pos_embed"], grid)
    assert {k for k in mim["student"] if k.startswith("mim_head.")}  # a head new in stage 2


def test_stage_configs_apply_each_stages_overrides_to_a_copy():
    exp = {
        "train": {
            "steps": 9,
            "stages": [
                {"name": "clip", "steps": 3, "overrides": {"loss.mim_weight": 0}},
                {"name": "hires", "steps": 2, "overrides": {"model.image_size": 448}},
            ],
        },
        "loss": {"mim_weight": 2.0},
        "model": {"image_size": 224},
    }
    typed = experiment(exp)
    (n1, clip), (n2, hires) = stage_configs(typed)
    assert (n1, clip.train.steps, clip.loss.mim_weight, clip.model.image_size) == ("clip", 3, 0, 224)
    assert (n2, hires.train.steps, hires.loss.mim_weight, hires.model.image_size) == ("hires", 2, 2.0, 448)
    assert typed.loss.mim_weight == 2.0 and typed.train.steps == 9  # the run's config is untouched
    assert exp["loss"]["mim_weight"] == 2.0 and exp["train"]["steps"] == 9
    assert stage_configs(exp) == [("clip", clip), ("hires", hires)]  # a dict works as well
    main = experiment({"train": {"steps": 9, "stages": []}})
    assert stage_configs({"train": {"steps": 9, "stages": []}}) == [("main", main)]
    assert stage_configs(main)[0][1] is main


def test_stage_overrides_are_checked_against_the_typed_config():
    def stages(overrides):
        return {"train": {"stages": [{"name": "a", "steps": 1, "overrides": overrides}]}}

    with pytest.raises(ConfigError, match="train.stages: override 'nosection.x' names no config section"):
        stage_configs(stages({"nosection.x": 1}))
    with pytest.raises(ConfigError, match="train.stages: override 'loss.mim_weight'"):
        stage_configs(stages({"loss.mim_weight": "lots"}))
    with pytest.raises(ConfigError, match="loss.mask_ratio"):
        stage_configs(stages({"loss.mask_ratio": 1.5}))


def test_a_stage_without_the_contrastive_term_keeps_the_text_tower_and_trains_the_rest(home):
    """ours:clip_then_ssl (ablations/tips_sequential.yaml): stage 2 at loss.clip_weight 0 starts from
    stage 1's weights, leaves the text tower as stage 1 left it, and trains the image tower and the
    one head both terms share (model.shared_heads) with L_distill and L_MIM only."""
    from tipslab.jobs.bench.step import synthetic_batch
    from tipslab.jobs.train.step import build_step, tips_step

    stages = (
        "[{name: clip, steps: 1, overrides: {loss.distill_weight: 0, loss.mim_weight: 0}},"
        " {name: ssl, steps: 1, overrides: {loss.clip_weight: 0}}]"
    )
    config = to_dict(load_experiment(BASE, ["model.shared_heads=true", "data.local_crops=2", f"train.stages={stages}"]))
    (_, clip), (_, ssl) = stage_configs(experiment(config))
    first = build_step(clip, "cpu", seed=0)
    batch = synthetic_batch(clip, 2)
    assert set(tips_step(first, batch, teacher_temp=0.04, momentum=0.9, step=0)) == {
        "clip_web",
        "clip_synthetic",
        "clip",
        "loss",
        "grad_norm",
    }
    carry = {"student": first.student.state_dict(), "objective": first.objective.state_dict(), "teacher": None}
    second = build_step(ssl, "cpu", seed=1, carry=carry)
    student = second.student
    assert student.head is student.distill_head is student.mim_head
    text = {k: v.clone() for k, v in student.text.state_dict().items()}
    vision = student.vision.pos_embed.clone()
    assert torch.equal(vision, carry["student"]["vision.pos_embed"])
    values = tips_step(second, synthetic_batch(ssl, 2), teacher_temp=0.04, momentum=0.9, step=0)
    assert set(values) == {"distill", "mim", "loss", "grad_norm"}
    torch.testing.assert_close(values["loss"], 0.1 * values["distill"] + 0.2 * values["mim"])
    assert all(torch.equal(v, text[k]) for k, v in student.text.state_dict().items())
    assert not torch.equal(student.vision.pos_embed, vision)
    assert not torch.equal(second.teacher.head.mlp[0].weight, student.head.mlp[0].weight)  # its own copy, moved
