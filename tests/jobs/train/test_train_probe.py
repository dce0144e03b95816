"""The periodic probe reports under the final evaluation's keys, so that ASHA can read them:
retrieval by default, and the dense probes that `train.probe_metrics` asks for."""

import pytest
import torch
from conftest import REPO, tiny_overrides

from tipslab.jobs.data.pipeline.streaming import split_dir
from tipslab.jobs.data.scenes.generate import generate_scenes
from tipslab.jobs.eval.evaluate import metric_keys
from tipslab.jobs.train.periodic import periodic_keys
from tipslab.jobs.train.probe import PeriodicProbe
from tipslab.models.checkpoint import tips_config
from tipslab.models.errors import ConfigError
from tipslab.models.tips import TIPSStudent
from tipslab.models.tokenizer import build_tokenizer
from tipslab.orchestrator.config import load_experiment, to_dict


def tiny(**extra) -> dict:
    overrides = tiny_overrides(**{"train.probe_images": 6, "train.probe_every": 2, **extra})
    exp = to_dict(load_experiment(REPO / "ablations" / "base" / "tips_tiny.yaml", overrides))
    for split in ("probe_train", "probe_test"):
        generate_scenes(
            split_dir(exp["data"]["root"], split), 8, split=split, size=exp["model"]["image_size"], parallel=False
        )
    return exp


def test_probe_scores_retrieval_on_a_few_probe_images_under_eval_keys(home, one_torch_thread):
    exp = tiny()
    probe = PeriodicProbe(exp, build_tokenizer(exp["model"]))
    [(name, path, target)] = probe.targets
    assert (name, path, target.probes, target.train_pixels) == ("scenes", None, ["retrieval"], None)
    assert target.test_pixels.shape == (6, 3, 112, 112)
    student = TIPSStudent(tips_config(exp)).train()
    scores = probe(student, torch.device("cpu"))
    assert set(scores) == set(periodic_keys(exp)) == {"eval/scenes/i2t_r1", "eval/scenes/t2i_r1"}
    assert set(scores) <= metric_keys(exp["eval"])
    assert all(min(abs(v - 100 * k / 6) for k in range(7)) < 1e-3 for v in scores.values()) and student.training


def test_probe_runs_the_dense_probes_it_is_asked_for_on_probe_train_and_probe_test(home, one_torch_thread):
    keys = ["eval/scenes/seg_miou", "eval/scenes/depth_rmse", "eval/scenes/i2t_r1"]
    exp = tiny(**{"train.probe_metrics": "[" + ",".join(keys) + "]", "eval.dense_train_size": 28})
    probe = PeriodicProbe(exp, build_tokenizer(exp["model"]))
    [(_, _, target)] = probe.targets
    assert target.probes == ["retrieval", "segmentation", "depth"]
    assert target.train_pixels.shape == target.test_pixels.shape == (6, 3, 112, 112)
    assert probe.ev.dense_train_size == 0  # the cheap variant, whatever the final evaluation uses
    student = TIPSStudent(tips_config(exp)).train()
    scores = probe(student, torch.device("cpu"))
    assert set(scores) == set(keys)  # only what was asked for (no depth_absrel, no t2i_r1)
    assert 0 <= scores["eval/scenes/seg_miou"] <= 100 and scores["eval/scenes/depth_rmse"] > 0
    assert student.training


def test_a_key_the_probe_cannot_report_names_train_probe_metrics(home):
    exp = tiny(**{"train.probe_metrics": "[eval/scenes/knn_top1]"})
    with pytest.raises(ConfigError, match=r"train\.probe_metrics\[0\]: the periodic probe cannot report"):
        PeriodicProbe(exp, None)
