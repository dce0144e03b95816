"""The standard dense protocols (docs/probes.md): DINOv2's linear segmentation scored at the full
label resolution, and DINOv2's linear depth (bins read out as a depth, SILog, CLS concatenated, the
Eigen crop): exact answers on features that encode the labels, chance on noise."""

import numpy as np
import pytest
import torch
from probe_data import context, features, one_hot, split

from tipslab.jobs.eval.evalsets import EvalSet
from tipslab.jobs.eval.probes import depth, dinov2_depth, protocols, segmentation
from tipslab.jobs.eval.probes.dense import upsample

rng = np.random.default_rng(0)
GRID, N, UP = 8, 64, 4  # an 8 x 8 patch grid; label maps of 32 x 32 pixels
S = GRID * UP
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tokens(encode: np.ndarray | None, dim: int = 24, noise: float = 0.05) -> np.ndarray:
    """[N, g, g, E] encoding in the first channels of [N, g*g, dim] tokens, plus relative noise."""
    x = rng.normal(size=(N, GRID * GRID, dim)).astype(np.float32)
    if encode is not None:
        enc = encode.reshape(N, GRID * GRID, -1)
        x = noise * x
        x[..., : enc.shape[-1]] += enc
    return x


def bands(classes: int) -> np.ndarray:
    """[N, g, g] classes in bands one patch wide, across or down: boundaries on patch boundaries,
    which bilinearly upsampled logits resolve to the pixel (at a corner of three classes no linear
    probe can)."""
    cells = np.repeat(rng.integers(0, classes, (N, GRID, 1)), GRID, axis=2)
    down = rng.random(N) < 0.5
    cells[down] = cells[down].transpose(0, 2, 1)
    return cells


def full(cells: np.ndarray, up: int = UP) -> np.ndarray:
    """Patch cells -> the label map of their pixels (each cell up x up pixels)."""
    return np.repeat(np.repeat(cells, up, axis=1), up, axis=2)


def seg_context(cells: dict, labels: dict, classes: int, noise=False, **ev):
    splits = {s: split(N, s, segmentation=labels[s]) for s in labels}
    enc = {s: features(splits[s], patch_tokens=tokens(None if noise else one_hot(cells[s], classes))) for s in cells}
    data = EvalSet("toy", splits["train"], splits["test"], seg_classes=classes)
    return enc, context(data, enc["train"], enc["test"], **ev)


def miou(enc, ctx) -> float:
    return segmentation.score(segmentation.fit(enc["train"], ctx), enc["test"], ctx)["seg_miou"]


def test_linear_upsampled_segmentation_is_exact_at_full_label_resolution_and_chance_on_noise():
    classes = 4
    cells = {s: bands(classes) for s in ("train", "test")}
    labels = {s: full(cells[s]).astype(np.uint8) for s in cells}
    labels["test"][:, 0, :3] = 255  # not scored
    ev = {"seg_protocol": "linear_upsampled", "seg_probe_epochs": 20, "seg_probe_lr": 0.1}
    enc, ctx = seg_context(cells, labels, classes, **ev)
    assert labels["test"].shape[-1] == 32 and miou(enc, ctx) == 100.0  # every one of 32 x 32 pixels
    enc, ctx = seg_context(cells, labels, classes, noise=True, **ev)
    # a random prediction of K balanced classes has IoU 1 / (2K - 1) = 14.3% per class
    assert miou(enc, ctx) == pytest.approx(100 / (2 * classes - 1), abs=5)


def test_linear_upsampled_trains_on_every_pixel_where_patch_grid_sees_the_cell_centres():
    """Each 8 x 8 pixel patch is of its class but for a 2 x 2 dot of the next class at its centre:
    training on every pixel learns the class (the dots, 1/16 of the pixels, are its errors);
    the cheap protocol samples each cell's centre, learns the dot's class, and gets nearly all wrong."""
    classes, up = 4, 8
    cells = {s: bands(classes) for s in ("train", "test")}
    labels = {}
    for s in cells:
        lab = full(cells[s], up)
        dot = np.zeros((GRID * up, GRID * up), bool)
        for c in range(GRID):
            dot[c * up + 3 : c * up + 5] = True  # rows 3..4 of each cell: its sampled centre (row 4) included
        dot &= dot.T
        labels[s] = np.where(dot, (lab + 1) % classes, lab).astype(np.uint8)
    enc, ctx = seg_context(
        cells, labels, classes, seg_protocol="linear_upsampled", seg_probe_epochs=20, seg_probe_lr=0.1
    )
    standard = miou(enc, ctx)
    enc, ctx = seg_context(cells, labels, classes, seg_protocol="patch_grid", seg_probe_epochs=100, seg_probe_lr=0.1)
    cheap = miou(enc, ctx)
    assert standard > 70 and cheap < 10  # 15/17 = 88% per class at best: a dot is an error and a false positive


def depth_data(encode: bool, bins: int, depth_max: float, crop: str = ""):
    """Smooth depth maps (the bilinear upsampling of one depth per patch, drawn between 0.5 m and
    depth_max) and features that hold each patch's depth in one channel, or noise."""
    out = {}
    for s in ("train", "test"):
        cells = rng.uniform(0.5, depth_max - 0.5, (N, GRID, GRID)).astype(np.float32)
        d = upsample(torch.from_numpy(cells)[:, None], S)[:, 0].numpy()
        d[:, 0, 0] = 0  # no measurement: never trained on, never scored
        t = tokens(cells[..., None] if encode else None, dim=8)
        out[s] = features(split(N, s, depth=d), patch_tokens=t, cls_web=t.mean(axis=1))
    data = EvalSet("toy", out["train"].split, out["test"].split, depth_max=depth_max, depth_eval_crop=crop)
    return out, data


def dinov2_scores(enc, data, **ev) -> dict:
    ctx = context(data, enc["train"], enc["test"], depth_protocol="dinov2_linear", **ev)
    return depth.score(depth.fit(enc["train"], ctx), enc["test"], ctx)


def test_the_bins_read_out_of_a_head_that_encodes_the_depth_is_exact():
    """Two bins at the ends of the range whose scores rise and fall with the depth in channel 0: the
    probability-weighted sum of the centres is the depth, and upsampling keeps it so."""
    bins, depth_max = 16, 8.0
    centres = dinov2_depth.bin_centres(bins, depth_max, "linear")
    d = torch.rand(5, 1, GRID, GRID) * 7 + 0.5
    head, alpha = torch.nn.Linear(4, bins), 1e4
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[-1, 0], head.bias[-1] = alpha, -alpha * centres[0]
        head.weight[0, 0], head.bias[0] = -alpha, alpha * centres[-1]
    pred = dinov2_depth.predict(head, torch.cat([d, torch.zeros(5, 3, GRID, GRID)], 1), centres, S)
    assert (pred - upsample(d, S)[:, 0]).abs().max() < 1e-3


def test_dinov2_linear_depth_learns_encoded_depth_and_gives_the_best_constant_on_noise():
    bins, depth_max = 16, 8.0
    ev = {"depth_bins": bins, "depth_probe_epochs": 60, "depth_probe_lr": 0.3}
    enc, data = depth_data(True, bins, depth_max)
    gt = data.test.depth[data.test.depth > 0]
    # knowing nothing, SILog's best guess is one depth per image, near the geometric mean
    chance = float(np.sqrt(((gt - np.exp(np.log(gt).mean())) ** 2).mean()))
    out = dinov2_scores(enc, data, **ev)
    assert out["depth_rmse"] < 0.15 * chance and out["depth_delta1"] > 99
    noise, data = depth_data(False, bins, depth_max)
    assert dinov2_scores(noise, data, **ev)["depth_rmse"] == pytest.approx(chance, rel=0.15)


def test_eigen_crop_scales_to_the_label_map_and_only_its_pixels_are_scored():
    mask = dinov2_depth.crop_mask("eigen", 480)  # a square map: rows 45:471, columns 41/640..601/640 of 480
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (45, 471, 31, 451)
    assert mask.sum() == (471 - 45) * (451 - 31) and dinov2_depth.crop_mask("", 8).all()
    gt = torch.full((1, 64, 64), 2.0)
    pred = gt.clone()
    pred[0, :6], pred[0, :, 60:] = 9.0, 9.0  # wrong only outside the crop (rows 6:63, columns 4:60 of 64)
    assert depth.depth_metrics(pred, gt, dinov2_depth.evaluated(gt, 10.0, "eigen"))["depth_rmse"] == 0.0
    assert depth.depth_metrics(pred, gt)["depth_rmse"] > 1
    gt[0, 10, 10], gt[0, 20, 20] = 0.0, 11.0  # unmeasured, and beyond depth max: not scored
    assert (
        not dinov2_depth.evaluated(gt, 10.0, "eigen")[0, 10, 10] and not dinov2_depth.evaluated(gt, 10.0, "")[0, 20, 20]
    )


def test_log_bins_are_even_in_log_depth():
    c = dinov2_depth.bin_centres(4, 10.0, "log")
    assert c.tolist() == pytest.approx([1e-3, 10 ** (-5 / 3), 10 ** (-1 / 3), 10.0])  # 10^-3 .. 10^1 in 3 steps
    assert dinov2_depth.bin_centres(3, 10.0, "linear").tolist() == pytest.approx([1e-3, 5.0005, 10.0])


def test_silog_is_zero_for_an_exact_depth_and_nearly_blind_to_scale():
    gt = torch.tensor([1.0, 2.0, 4.0, 8.0])
    valid = torch.ones(4, dtype=torch.bool)
    assert dinov2_depth.silog(gt, gt, valid).item() == pytest.approx(0, abs=1e-6)
    # twice too far everywhere: g = log 2 on every pixel, var 0, so sqrt(0.15) log 2
    assert dinov2_depth.silog(gt * 2, gt, valid).item() == pytest.approx(0.15**0.5 * np.log(2), rel=1e-3)


def test_auto_picks_the_standard_protocols_on_standard_datasets_and_the_cheap_ones_on_probe_splits():
    from tipslab.jobs.config import EvalConfig

    ev = EvalConfig()
    assert protocols.resolve("segmentation", ev, standard=True) == "linear_upsampled"
    assert protocols.resolve("depth", ev, standard=True) == "dinov2_linear"
    assert protocols.resolve("segmentation", ev, standard=False) == "patch_grid"
    assert protocols.resolve("depth", ev, standard=False) == "scenes_bins"
    assert protocols.resolve("knn", ev, standard=True) is None
    forced = EvalConfig(seg_protocol="patch_grid", depth_protocol="dinov2_linear")
    assert protocols.resolve("segmentation", forced, True) == "patch_grid"
    assert protocols.resolve("depth", forced, False) == "dinov2_linear"
    assert protocols.label_size(ev, ("segmentation",), standard=True, image_size=224) == 512
    assert protocols.label_size(ev, ("segmentation",), standard=False, image_size=224) == 224
    assert protocols.label_size(forced, ("segmentation",), standard=True, image_size=224) == 224
    assert protocols.label_size(EvalConfig(dense_label_size=0), ("depth",), True, 224) == 224
    with pytest.raises(ValueError, match="eval.seg_protocol: 'upsampled' is not one of"):
        EvalConfig(seg_protocol="upsampled")
    with pytest.raises(ValueError, match="eval.depth_bin_spacing"):
        EvalConfig(depth_bin_spacing="sid")
