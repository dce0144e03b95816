import io

import numpy as np
from PIL import Image

from tipslab.jobs.data.scenes import scene_row
from tipslab.jobs.data.views import TIPSViews
from tipslab.models.tokenizer import HashTokenizer


def views(**kw):
    args = dict(image_size=56, patch_size=14, local_crops=3, local_crop_size=28, global_crop_scale=[0.8, 1.0],
                local_crop_scale=[0.3, 0.5], mask_ratio=0.75, tokenizer=HashTokenizer(100, 8))
    args.update(kw)
    return TIPSViews(**args)


def batch_of(rows):
    return {k: np.array([r[k] for r in rows], dtype=object) for k in ("key", "image", "web_caption", "synthetic_caption")}


def test_views_shapes_ranges_masks_and_tokens():
    rows = [scene_row(s, "train", size=56) for s in range(4)]
    out = views()(batch_of(rows))
    assert out["global_crop"].shape == (4, 3, 56, 56) and out["global_crop"].dtype == np.float32
    assert out["local_crops"].shape == (4, 3, 3, 28, 28)
    assert 0.0 <= out["global_crop"].min() and out["global_crop"].max() <= 1.0
    assert out["masks"].shape == (4, 16) and (out["masks"].sum(1) == 12).all()  # 75% of 16 patches
    assert out["web_tokens"].shape == (4, 8) and out["synthetic_tokens"].dtype == np.int64
    assert (out["synthetic_tokens"][:, 0] > 0).all()


def test_corrupt_row_is_skipped_not_fatal():
    rows = [scene_row(s, "train", size=56) for s in range(3)]
    rows[1]["image"] = b"not an image"
    out = views()(batch_of(rows))
    assert out["global_crop"].shape[0] == 2 and out["web_tokens"].shape[0] == 2


def test_global_crop_of_full_scale_is_the_image():
    row = scene_row(7, "train", size=56)
    out = views(global_crop_scale=[1.0, 1.0])(batch_of([row]))
    # scale 1 with the image's own aspect ratio may still pick a sub-window of ratio 3/4..4/3;
    # the pixel values stay those of the image (no colour change)
    image = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB")).astype(np.float32) / 255
    assert abs(out["global_crop"][0].mean() - image.mean()) < 0.05


def test_tags_become_multi_hot_over_the_vocabulary():
    rows = [scene_row(s, "train", size=56) for s in range(3)]
    batch = batch_of(rows)
    batch["tags"] = np.array([["circle", "red"], ["square", "unknown-tag"], None], dtype=object)
    out = views(tag_vocab=["circle", "square", "red"])(batch)
    assert out["tags"].tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert "tags" not in views()(batch_of(rows))  # no vocabulary, no tags
