import pytest
import torch

from tipslab.jobs.evaluate import (
    linear_segmentation_probe, mean_iou, metric_keys, patch_grid, retrieval_recall_at_1, retrieval_token,
)


def test_recall_at_1_counts_exact_matches():
    image = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]]  # captions 2 and 3 swapped
    i2t, t2i = retrieval_recall_at_1(image, text)
    assert i2t == pytest.approx(50.0) and t2i == pytest.approx(50.0)
    assert retrieval_recall_at_1(image, torch.eye(4)) == (100.0, 100.0)


def test_mean_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2 absent in both: ignored
    assert mean_iou(pred, target, 3) == pytest.approx(100 * (0.5 + 2 / 3) / 2)


def test_linear_probe_separates_linearly_separable_patches():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (16, 4, 4))
    feats = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() + 0.05 * torch.randn(16, 3, 4, 4)
    seg = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)  # labels at 16x16 "pixels"
    miou = linear_segmentation_probe(feats[:8], seg[:8], feats[8:], seg[8:], 3, epochs=100, lr=0.1)
    assert miou > 90
    noise = torch.randn(16, 3, 4, 4)
    assert linear_segmentation_probe(noise[:8], seg[:8], noise[8:], seg[8:], 3, epochs=100, lr=0.1) < 60


def test_patch_grid_layout():
    tokens = torch.arange(2 * 4 * 3).reshape(2, 4, 3).float()
    grid = patch_grid(tokens)
    assert grid.shape == (2, 3, 2, 2) and grid[1, 2, 1, 0] == tokens[1, 2, 2]


def test_metric_registry_and_retrieval_token():
    assert metric_keys({"dataset": "scenes"}) == {"eval/scenes/i2t_r1", "eval/scenes/t2i_r1", "eval/scenes/seg_miou"}
    exp = {"loss": {"caption_mode": "dual_cls"}, "eval": {"retrieval_token": "auto", "retrieval_caption": "synthetic_caption"}}
    assert retrieval_token(exp) == "cls_synthetic"
    exp["loss"]["caption_mode"] = "web"
    assert retrieval_token(exp) == "cls_web"
    exp["eval"]["retrieval_token"] = "cls_synthetic"
    assert retrieval_token(exp) == "cls_synthetic"
