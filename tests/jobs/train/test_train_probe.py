"""The periodic probe reports under the final evaluation's keys, so that ASHA can read them."""

import torch
from conftest import REPO, tiny_overrides

from tipslab.jobs.data.pipeline.streaming import split_dir
from tipslab.jobs.data.scenes.generate import generate_scenes
from tipslab.jobs.eval.evaluate import metric_keys
from tipslab.jobs.train.probe import RetrievalProbe
from tipslab.models.checkpoint import tips_config
from tipslab.models.tips import TIPSStudent
from tipslab.models.tokenizer import build_tokenizer
from tipslab.orchestrator.config import load_experiment, to_dict


def test_probe_scores_retrieval_on_a_few_probe_images_under_eval_keys(home, one_torch_thread):
    exp = to_dict(
        load_experiment(REPO / "ablations" / "base" / "tips_tiny.yaml", tiny_overrides(**{"train.probe_images": 6}))
    )
    generate_scenes(
        split_dir(exp["data"]["root"], "probe_test"),
        8,
        split="probe_test",
        size=exp["model"]["image_size"],
        parallel=False,
    )
    probe = RetrievalProbe(exp, build_tokenizer(exp["model"]))
    assert probe.pixels.shape == (6, 3, 112, 112)
    student = TIPSStudent(tips_config(exp)).train()
    scores = probe(student, torch.device("cpu"))
    assert set(scores) == {"eval/scenes/i2t_r1", "eval/scenes/t2i_r1"} <= metric_keys(exp["eval"])
    assert all(min(abs(v - 100 * k / 6) for k in range(7)) < 1e-3 for v in scores.values()) and student.training
