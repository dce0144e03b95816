"""Segmentation, depth and normals on patch tokens: exact answers on features that encode the
label (scored at the patch grid, where no upsampling blurs a boundary), chance on noise."""

import numpy as np
import pytest
import torch
from probe_data import context, features, one_hot, split

from tipslab.jobs.eval.evalsets import EvalSet
from tipslab.jobs.eval.probes import depth, normals, segmentation
from tipslab.jobs.eval.probes.dense import nearest

rng = np.random.default_rng(0)
GRID, N = 8, 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tokens(encode: np.ndarray | None, dim: int = 24, noise: float = 0.05) -> np.ndarray:
    """[N, g, g, E] encoding -> [N, g*g, dim] tokens: the encoding in the first channels plus a
    `noise` (relative); None: noise only."""
    n = N
    x = rng.normal(size=(n, GRID * GRID, dim)).astype(np.float32)
    if encode is not None:
        enc = encode.reshape(n, GRID * GRID, -1)
        x = noise * x
        x[..., : enc.shape[-1]] += enc
    return x


def test_segmentation_is_exact_on_label_features_and_chance_on_noise():
    classes = 4
    seg = {s: rng.integers(0, classes, (N, GRID, GRID)).astype(np.uint8) for s in ("train", "test")}
    seg["test"][:, 0, 0] = 255  # not scored
    splits = {s: split(N, s, segmentation=seg[s]) for s in seg}
    data = EvalSet("toy", splits["train"], splits["test"], seg_classes=classes)
    enc = {s: features(splits[s], patch_tokens=tokens(one_hot(np.minimum(seg[s], classes - 1), classes))) for s in seg}
    ctx = context(data, enc["train"], enc["test"], seg_probe_epochs=100, seg_probe_lr=0.1)
    assert segmentation.score(segmentation.fit(enc["train"], ctx), enc["test"], ctx) == {"seg_miou": 100.0}
    noise = {s: features(splits[s], patch_tokens=tokens(None)) for s in seg}
    miou = segmentation.score(segmentation.fit(noise["train"], ctx), noise["test"], ctx)["seg_miou"]
    # a random prediction of K balanced classes has IoU 1 / (2K - 1) = 14.3% per class
    assert miou == pytest.approx(100 / (2 * classes - 1), abs=5)


def test_mean_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0]])
    # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2 absent in both; 255 not scored
    assert segmentation.mean_iou(pred, target, 3) == pytest.approx(100 * (0.5 + 2 / 3) / 2)


def depth_splits(encode: bool, bins: int, depth_max: float):
    centres = depth.bin_centres(bins, depth_max).numpy()
    out = {}
    for s in ("train", "test"):
        idx = rng.integers(0, bins, (N, GRID, GRID))
        d = centres[idx].astype(np.float32)
        d[:, 0, 0] = 0  # no measurement: never trained on, never scored
        sp = split(N, s, depth=d)
        out[s] = features(sp, patch_tokens=tokens(one_hot(idx, bins) if encode else None))
    return out


def test_depth_is_exact_on_bin_centres_and_uninformed_on_noise():
    bins, depth_max = 8, 8.0
    ev = {"depth_bins": bins, "depth_max": depth_max, "depth_probe_epochs": 200, "depth_probe_lr": 0.1}
    enc = depth_splits(True, bins, depth_max)
    data = EvalSet("toy", enc["train"].split, enc["test"].split)
    ctx = context(data, enc["train"], enc["test"], **ev)
    out = depth.score(depth.fit(enc["train"], ctx), enc["test"], ctx)
    # bin width 1 m: the read-out is the softmax-weighted mean of centres, nearly one-hot here
    assert out["depth_rmse"] < 0.05 and out["depth_absrel"] < 0.02 and out["depth_delta1"] == 100.0
    noise = depth_splits(False, bins, depth_max)
    ctx = context(EvalSet("toy", noise["train"].split, noise["test"].split), noise["train"], noise["test"], **ev)
    out = depth.score(depth.fit(noise["train"], ctx), noise["test"], ctx)
    # knowing nothing, the best guess is the mean depth, whose RMSE is the spread of the centres (2.29 m)
    assert out["depth_rmse"] == pytest.approx(float(np.std(depth.bin_centres(bins, depth_max).numpy())), rel=0.15)
    # the protocol tells a scene set's largest depth in 4 digits, not a float's 17
    assert depth.protocol(ctx, {"depth_max": 7.123456789012345})["depth_max"] == 7.123


def test_depth_metrics_by_hand():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])
    pred = torch.tensor([[[1.0, 3.0], [4.0, 9.0]]])  # the unmeasured pixel is not scored
    out = depth.depth_metrics(pred, gt)
    assert out["depth_rmse"] == pytest.approx((1 / 3) ** 0.5)
    assert out["depth_absrel"] == pytest.approx(0.5 / 3)
    assert out["depth_delta1"] == pytest.approx(200 / 3)


def random_normals(n):
    v = rng.normal(size=(n, GRID, GRID, 3)).astype(np.float32)
    v[..., 2] = np.abs(v[..., 2])  # facing the camera: a hemisphere
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_normals_are_exact_on_encoding_features_and_uninformed_on_noise():
    nrm = {s: random_normals(N) for s in ("train", "test")}
    nrm["test"][:, 0, 0] = 0  # no normal: not scored
    splits = {s: split(N, s, normals=nrm[s]) for s in nrm}
    data = EvalSet("toy", splits["train"], splits["test"])
    enc = {s: features(splits[s], patch_tokens=tokens(nrm[s], noise=0.005)) for s in nrm}
    ctx = context(data, enc["train"], enc["test"])
    assert normals.score(normals.fit(enc["train"], ctx), enc["test"], ctx)["normals_mean_angle"] < 1.0
    noise = {s: features(splits[s], patch_tokens=tokens(None)) for s in nrm}
    err = normals.score(normals.fit(noise["train"], ctx), noise["test"], ctx)["normals_mean_angle"]
    # the uninformed guess is the mean normal (the camera axis): 1 rad = 57.3 degrees on a hemisphere
    assert err == pytest.approx(57.3, abs=5)


def test_nearest_samples_cell_centres():
    labels = torch.arange(16).reshape(1, 4, 4)
    assert nearest(labels, 2).tolist() == [[[5, 7], [13, 15]]]


def test_depth_range_defaults_to_the_dataset_cap_then_the_probe_train_maximum():
    enc = depth_splits(True, 8, 8.0)
    ev = {"depth_bins": 8, "depth_max": 0.0, "depth_probe_epochs": 1}
    data = EvalSet("toy", enc["train"].split, enc["test"].split)
    assert depth.fit(enc["train"], context(data, enc["train"], enc["test"], **ev))["depth_max"] == 7.5  # top centre
    data.depth_max = 10.0  # NYUv2's reader sets DINOv2's 10 m
    assert depth.fit(enc["train"], context(data, enc["train"], enc["test"], **ev))["depth_max"] == 10.0
    assert (
        depth.fit(enc["train"], context(data, enc["train"], enc["test"], **{**ev, "depth_max": 4.0}))["depth_max"]
        == 4.0
    )
