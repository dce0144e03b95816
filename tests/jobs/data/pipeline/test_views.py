import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from tipslab.jobs.data.pipeline import photometric
from tipslab.jobs.data.pipeline.masking import make_mask
from tipslab.jobs.data.pipeline.views import BAD_ROW_COLUMNS, TIPSViews, decode, row_seed
from tipslab.jobs.data.scenes.generate import scene_row
from tipslab.models.tokenizer import HashTokenizer


def views(**kw):
    args = dict(
        image_size=56,
        patch_size=14,
        local_crops=3,
        local_crop_size=28,
        global_crop_scale=[0.8, 1.0],
        local_crop_scale=[0.3, 0.5],
        mask_ratio=0.75,
        tokenizer=HashTokenizer(100, 8),
    )
    args.update(kw)
    return TIPSViews(**args)


def batch_of(rows):
    return {
        k: np.array([r[k] for r in rows], dtype=object) for k in ("key", "image", "web_caption", "synthetic_caption")
    }


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def test_views_shapes_ranges_masks_and_tokens():
    rows = [scene_row(s, "train", size=56) for s in range(4)]
    out = views()(batch_of(rows))
    # uint8 in 0..255: a quarter of float32's bytes; the vision tower makes them float on the device
    assert out["global_crop"].shape == (4, 3, 56, 56) and out["global_crop"].dtype == np.uint8
    assert out["local_crops"].shape == (4, 3, 3, 28, 28) and out["local_crops"].dtype == np.uint8
    assert out["global_crop"].max() > 1  # pixel values, not [0, 1] fractions
    assert out["masks"].shape == (4, 16) and (out["masks"].sum(1) == 12).all()  # 75% of 16 patches
    assert out["web_tokens"].shape == (4, 8) and out["synthetic_tokens"].dtype == np.int64
    assert (out["synthetic_tokens"][:, 0] > 0).all()
    assert out["rows_seen"].tolist() == [0, 0, 0, 4] and out["bad_rows"].sum() == 0  # on the last row
    # row_bytes (the size Ray Data's blocks are cut to) is the crops' and the mask's bytes of a row
    assert sum(out[c].nbytes for c in ("global_crop", "local_crops", "masks")) == 4 * views().row_bytes()


def test_bad_rows_are_skipped_and_counted_by_reason():
    rows = [scene_row(s, "train", size=56) for s in range(4)]
    rows[1]["image"] = b"not an image"
    rows[2]["web_caption"] = "   "
    out = views()(batch_of(rows))
    assert out["global_crop"].shape[0] == 2 and out["web_tokens"].shape[0] == 2
    assert set(BAD_ROW_COLUMNS) <= set(out)
    assert out["rows_seen"].sum() == 4 and out["bad_rows"].sum() == 2
    assert out["bad_not_an_image"].sum() == 1 and out["bad_empty_caption"].sum() == 1


def test_a_batch_of_only_bad_rows_hands_its_counts_to_the_next_batch():
    v = views()
    bad = [scene_row(s, "train", size=56) for s in range(2)]
    for r in bad:
        r["image"] = b"\x89PNG\r\n\x1a\n truncated"
    empty = v(batch_of(bad))
    assert empty["global_crop"].shape == (0, 3, 56, 56) and empty["masks"].shape == (0, 16)
    assert empty["global_crop"].dtype == empty["local_crops"].dtype == np.uint8  # as a batch with rows
    assert empty["bad_rows"].sum() == 0
    out = v(batch_of([scene_row(9, "train", size=56)]))
    assert out["rows_seen"].tolist() == [3] and out["bad_rows"].tolist() == [2]


def test_views_returns_a_batchs_views_and_its_counts_apart():
    rows = [scene_row(s, "train", size=56) for s in range(3)]
    rows[0]["web_caption"] = ""
    v = views()
    out, bad = v.views(batch_of(rows))
    assert len(out["masks"]) == 2 and not set(BAD_ROW_COLUMNS) & set(out)
    assert bad.rows_seen == 3 and bad.counts == {"empty_caption": 1}
    nothing, bad = v.views(batch_of(rows[:1]))
    assert nothing is None and bad.counts == {"empty_caption": 1}
    assert v.carried.rows_seen == 0  # nothing carried: the caller places the counts


def test_global_crop_of_full_scale_is_the_image():
    row = scene_row(7, "train", size=56)
    out = views(global_crop_scale=[1.0, 1.0])(batch_of([row]))
    # scale 1 with the image's own aspect ratio may still pick a sub-window of ratio 3/4..4/3;
    # the pixel values stay those of the image (no colour change)
    image = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB")).astype(np.float32)
    assert abs(out["global_crop"][0].mean() - image.mean()) < 0.05 * 255


def test_tags_become_multi_hot_over_the_vocabulary():
    rows = [scene_row(s, "train", size=56) for s in range(3)]
    batch = batch_of(rows)
    batch["tags"] = np.array([["circle", "red"], ["square", "unknown-tag"], None], dtype=object)
    out = views(tag_vocab=["circle", "square", "red"])(batch)
    assert out["tags"].tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert "tags" not in views()(batch_of(rows))  # no vocabulary, no tags


@pytest.mark.parametrize("augment", ["none", "dinov2"])
def test_a_rows_views_depend_on_seed_epoch_and_key_only(augment):
    rows = [scene_row(s, "train", size=56) for s in range(4)]
    first = views(augment=augment, epoch=3)(batch_of(rows))
    shuffled = views(augment=augment, epoch=3)(batch_of(rows[::-1][:3]))  # other batch, other order
    for column in ("global_crop", "local_crops", "masks"):
        np.testing.assert_array_equal(first[column][1:][::-1], shuffled[column])
    next_epoch = views(augment=augment, epoch=4)(batch_of(rows))
    assert not np.array_equal(first["global_crop"], next_epoch["global_crop"])
    assert not np.array_equal(first["masks"], next_epoch["masks"])
    # a row's `epoch` column (the training rows carry theirs) seeds its views in place of the instance's
    mixed = views(augment=augment, epoch=0)({**batch_of(rows), "epoch": np.array([3, 4, 3, 4])})
    assert mixed["epoch"].tolist() == [3, 4, 3, 4]
    for column in ("global_crop", "local_crops", "masks"):
        np.testing.assert_array_equal(mixed[column][0::2], first[column][0::2])
        np.testing.assert_array_equal(mixed[column][1::2], next_epoch[column][1::2])


def test_dinov2_augmentation_changes_colours_but_not_crops():
    rows = [scene_row(s, "train", size=56) for s in range(8)]
    plain = views(global_crop_scale=[1.0, 1.0])(batch_of(rows))
    augmented = views(global_crop_scale=[1.0, 1.0], augment="dinov2")(batch_of(rows))
    assert augmented["global_crop"].dtype == augmented["local_crops"].dtype == np.uint8
    np.testing.assert_array_equal(plain["masks"], augmented["masks"])  # masks have their own stream
    diff = np.abs(plain["global_crop"].astype(np.float32) - augmented["global_crop"].astype(np.float32)) / 255
    changed = diff.mean(axis=(1, 2, 3)) > 1e-3
    assert changed.sum() >= 6  # every view has some jitter, blur or flip with probability 0.95


def test_augmented_views_are_the_float_augmentation_rounded_to_uint8():
    rows = [scene_row(s, "train", size=56) for s in range(6)]
    plain = views(local_crops=1)(batch_of(rows))
    v = views(local_crops=1, augment="dinov2")
    out = v(batch_of(rows))
    for column, view in (("global_crop", 0), ("local_crops", 1)):
        crops = torch.from_numpy(plain[column]).reshape(-1, 3, *plain[column].shape[-2:])
        draws = []
        for key in batch_of(rows)["key"]:  # the rows' own draws, from their augment streams
            drawn = v.draw_augment(np.random.default_rng(row_seed(0, 0, key).spawn(3)[1]))
            draws.append(drawn[view])
        flips = torch.tensor([flip for flip, _ in draws])
        crops = torch.where(flips[:, None, None, None], crops.flip(-1), crops)
        reference = photometric.apply(crops.float() / 255, [p for _, p in draws]) * 255
        ours = torch.from_numpy(out[column]).reshape(crops.shape).float()
        assert (ours - reference).abs().max() <= 0.5 + 1e-3  # rounded, not truncated
        assert ours.min() >= 0 and ours.max() <= 255


def test_dinov2_probabilities_per_view():
    v = views(augment="dinov2", local_crops=1)
    draws = [v.draw_augment(np.random.default_rng(i)) for i in range(4000)]

    def rate(view, has):
        return np.mean([has(d[view][1]) or False for d in draws])

    assert rate(0, lambda p: p.blur_sigma > 0) == pytest.approx(0.55, abs=0.03)  # (1.0 + 0.1) / 2
    assert rate(0, lambda p: p.solarize) == pytest.approx(0.10, abs=0.02)  # (0 + 0.2) / 2
    assert rate(1, lambda p: p.blur_sigma > 0) == pytest.approx(0.5, abs=0.03)
    assert rate(1, lambda p: p.solarize) == 0.0
    assert rate(1, lambda p: any(n == "hue" for n, _ in p.steps)) == pytest.approx(0.8, abs=0.03)
    assert rate(1, lambda p: any(n == "grayscale" for n, _ in p.steps)) == pytest.approx(0.2, abs=0.03)
    assert np.mean([d[0][0] for d in draws]) == pytest.approx(0.5, abs=0.03)  # flips


def one_step(name, factor):
    return photometric.Photometric(((name, factor),), 0.0, False)


def test_colour_steps_equal_torchvisions_on_unclipped_values():
    x = 0.25 + 0.5 * torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    for name, factor, reference in [
        ("brightness", 1.3, TF.adjust_brightness),
        ("contrast", 0.7, TF.adjust_contrast),
        ("saturation", 1.2, TF.adjust_saturation),
    ]:
        ours = photometric.apply(x.clone(), [one_step(name, factor)])
        torch.testing.assert_close(ours, reference(x, factor), atol=1e-5, rtol=0)
    grey = photometric.apply(x.clone(), [one_step("grayscale", 1.0)])
    torch.testing.assert_close(grey, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-5, rtol=0)


def test_hue_rotation_keeps_luma_and_greys_and_a_full_turn_is_identity():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    x[1] = x[1].mean(0, keepdim=True)  # a grey image
    rotated = photometric.apply(x.clone(), [one_step("hue", 0.1)] * 2)
    luma = torch.tensor(photometric.LUMA, dtype=torch.float32)[:, None, None]
    torch.testing.assert_close((rotated[0] * luma).sum(0), (x[0] * luma).sum(0), atol=1e-5, rtol=0)
    assert (rotated[0] - x[0]).abs().max() > 0.01
    torch.testing.assert_close(rotated[1], x[1], atol=1e-5, rtol=0)
    m, _ = one_step("hue", 1.0).colour_map(np.full(3, 0.5))
    np.testing.assert_allclose(m, np.eye(3), atol=1e-12)


def test_blur_and_solarize_equal_torchvisions():
    x = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    sigmas = [0.7, 1.9]
    ours = photometric.apply(x.clone(), [photometric.Photometric((), s, False) for s in sigmas])
    for i, s in enumerate(sigmas):
        torch.testing.assert_close(ours[i], TF.gaussian_blur(x[i], [9, 9], [s, s]), atol=1e-5, rtol=0)
    solarized = photometric.apply(
        x.clone(), [photometric.Photometric((), 0.0, True), photometric.Photometric((), 0.0, False)]
    )
    torch.testing.assert_close(solarized[0], TF.solarize(x[0], 128 / 255))
    torch.testing.assert_close(solarized[1], x[1])


def boundary(mask: np.ndarray, grid: int) -> int:
    """Neighbouring patch pairs of which one is masked and the other not."""
    m = mask.reshape(grid, grid)
    return int((m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum())


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_blockwise_masks_have_the_exact_count_in_blocks(ratio):
    grid = 16
    blockwise = [make_mask(np.random.default_rng(i), "blockwise", grid, ratio) for i in range(50)]
    scattered = [make_mask(np.random.default_rng(i), "random", grid, ratio) for i in range(50)]
    assert all(m.sum() == round(ratio * grid * grid) for m in blockwise + scattered)
    # rectangles leave far fewer masked/unmasked edges than patches masked independently
    assert np.mean([boundary(m, grid) for m in blockwise]) < 0.6 * np.mean([boundary(m, grid) for m in scattered])


def test_mask_mode_and_augment_are_checked():
    with pytest.raises(ValueError, match="loss.mask_mode"):
        views(mask_mode="checkerboard")
    with pytest.raises(ValueError, match="data.augment"):
        views(augment="heavy")


@pytest.mark.parametrize("fmt, side", [("JPEG", 1024), ("PNG", 600)])
def test_large_images_are_decoded_at_a_reduced_scale_no_smaller_than_needed(fmt, side):
    rng = np.random.default_rng(0)
    image = encoded(rng.integers(0, 256, (side, side + 40, 3), dtype=np.uint8), fmt)
    need = 250
    pixels = decode(image, "big", 10**8, need)
    assert pixels.dtype == torch.uint8 and pixels.shape[0] == 3
    assert need <= min(pixels.shape[1:]) < 2 * need
    out = views(image_size=224, local_crop_size=96, global_crop_scale=[0.8, 1.0], local_crop_scale=[0.25, 0.5])(
        {
            "key": np.array(["big"], object),
            "image": np.array([image], object),
            "web_caption": np.array(["a"], object),
            "synthetic_caption": np.array(["b"], object),
        }
    )
    assert out["global_crop"].shape == (1, 3, 224, 224) and out["local_crops"].shape == (1, 3, 3, 96, 96)


@pytest.mark.parametrize("native", [True, False], ids=["uint8 resize", "float resize"])
def test_resized_crop_equals_torchvisions_without_importing_it(monkeypatch, native):
    from tipslab.jobs.data.pipeline import views as views_module

    monkeypatch.setattr(views_module, "native_uint8_resize", lambda: native)
    rng = np.random.default_rng(0)
    for i in range(60):
        height, width = rng.integers(20, 300, 2)
        image = torch.from_numpy(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).permute(2, 0, 1)
        image = image.contiguous() if i % 2 else image  # as decoded (HWC memory), or CHW
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        size = [int(rng.choice([h, 14, 56, 96, 224]))] * 2
        expected = TF.resized_crop(image if native else image.float(), top, left, h, w, size, antialias=True)
        expected = expected if native else expected.round().to(torch.uint8)
        assert torch.equal(views_module.resized_crop(image, top, left, h, w, size), expected), (i, size)


def test_a_views_worker_imports_neither_torchvision_nor_the_model():
    # A views actor's start-up: a fresh process imports the pipeline. torchvision would add a second or
    # more; the model's losses would bring torch._dynamo with them (1.5-3 s on 2 cores).
    unwanted = ["torchvision", "torch._dynamo", "tipslab.models.mim", "timm"]
    code = f"import sys, tipslab.jobs.data.pipeline.streaming; print([m for m in {unwanted} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
