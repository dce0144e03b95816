"""Each reader on a tiny fixture in its format, written into tmp_path; and its errors."""

import json

import numpy as np
import pytest
from PIL import Image

from tipslab.jobs.eval.evalsets import (
    IGNORE,
    STANDARD,
    EvalDataError,
    EvalSet,
    EvalSplit,
    check_disjoint,
    read_standard,
)

SIZE = 28


def rgb(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path)


def test_class_folders(tmp_path):
    for split, n in (("train", 2), ("val", 1)):
        for c in ("n01_goldfish", "n02_tabby_cat"):
            for i in range(n):
                rgb(tmp_path / split / c / f"{i}.JPEG", seed=i)
    (tmp_path / "classnames.txt").write_text("n01_goldfish goldfish\nn02_tabby_cat tabby cat\n")
    es = read_standard("imagenet", str(tmp_path), SIZE)
    assert es.class_names == ["goldfish", "tabby cat"]
    assert es.train.labels.tolist() == [0, 0, 1, 1] and es.test.labels.tolist() == [0, 1]
    assert es.test.keys == ["val/n01_goldfish/0.JPEG", "val/n02_tabby_cat/0.JPEG"]
    (tmp_path / "val" / "n03_new").mkdir()
    with pytest.raises(EvalDataError, match="n03_new"):
        read_standard("imagenet", str(tmp_path), SIZE)


def test_imagenet_wnid_folders_take_the_published_class_names(tmp_path):
    from tipslab.jobs.eval.evalsets.class_folders import class_names

    wnids = [f"n{i:08d}" for i in range(1000)]  # sorted, as ImageNet-1k's class indices are
    names = class_names(tmp_path, wnids)
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet paper"
    assert class_names(tmp_path, wnids[:3]) == wnids[:3]  # a subset cannot be mapped: the ids


@pytest.mark.parametrize("name,filepath", [("coco", "val2014"), ("flickr30k", "")])
def test_karpathy_captions(tmp_path, name, filepath):
    images = []
    for i, split in enumerate(("test", "train", "test")):
        rgb(tmp_path / (filepath or "flickr30k-images") / f"{i}.jpg")
        images.append(
            {
                "filename": f"{i}.jpg",
                "filepath": filepath,
                "split": split,
                "imgid": i,
                "sentences": [{"raw": f"image {i} caption {j}"} for j in range(5 if i else 6)],
            }
        )
    if not filepath:
        for im in images:
            del im["filepath"]
    (tmp_path / f"dataset_{name}.json").write_text(json.dumps({"images": images}))
    es = read_standard(name, str(tmp_path), SIZE)
    assert es.train is None and es.test.keys == ["0", "2"]
    assert es.test.captions[0] == "image 0 caption 0" and len(es.test.captions) == 11
    assert es.test.caption_image.tolist() == [0] * 6 + [1] * 5


def test_karpathy_errors_name_the_file(tmp_path):
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": [{"split": "test", "filename": "x.jpg"}]}))
    with pytest.raises(EvalDataError, match=r"images\[0\].*sentences"):
        read_standard("coco", str(tmp_path), SIZE)


def palette_png(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(list(np.random.default_rng(1).integers(0, 255, 768)))
    img.save(path)


def test_pascal_voc_keeps_palette_indices_and_ignore(tmp_path):
    ids = np.zeros((20, 30), np.uint8)
    ids[:, 15:] = 15
    ids[0] = 255
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for n in names:
            rgb(tmp_path / "JPEGImages" / f"{n}.jpg")
            palette_png(tmp_path / "SegmentationClass" / f"{n}.png", ids)
    es = read_standard("pascal_voc", str(tmp_path), SIZE)
    assert es.seg_classes == 21 and es.test.keys == ["c"] and es.train.segmentation.shape == (2, SIZE, SIZE)
    assert set(np.unique(es.test.segmentation)) == {0, 15, 255}
    palette_png(tmp_path / "SegmentationClass" / "c.png", np.full((20, 30), 40))
    with pytest.raises(EvalDataError, match="'c' has class ids outside"):
        read_standard("pascal_voc", str(tmp_path), SIZE)


def test_ade20k_shifts_ids_and_ignores_zero(tmp_path):
    ids = np.zeros((20, 30), np.uint8)
    ids[:, 10:] = 1
    ids[:, 20:] = 150
    for split in ("training", "validation"):
        rgb(tmp_path / "images" / split / "ADE_1.jpg")
        (tmp_path / "annotations" / split).mkdir(parents=True)
        Image.fromarray(ids, mode="L").save(tmp_path / "annotations" / split / "ADE_1.png")
    es = read_standard("ade20k", str(tmp_path), SIZE)
    assert es.seg_classes == 150 and set(np.unique(es.test.segmentation)) == {IGNORE, 0, 149}
    (tmp_path / "annotations" / "validation" / "ADE_1.png").unlink()
    with pytest.raises(EvalDataError, match="ADE_1.png: no such file"):
        read_standard("ade20k", str(tmp_path), SIZE)


def test_nyuv2_depth_pairs_in_metres(tmp_path):
    mm = np.full((20, 30), 2500, np.uint16)
    mm[0] = 0
    for split in ("train", "test"):
        rgb(tmp_path / split / "rgb" / "0001.jpg")
        (tmp_path / split / "depth").mkdir(parents=True)
        img = Image.new("I;16", (30, 20))
        img.frombytes(mm.astype("<u2").tobytes(), "raw", "I;16")
        img.save(tmp_path / split / "depth" / "0001.png")
    es = read_standard("nyuv2", str(tmp_path), SIZE)
    assert es.test.keys == ["test/0001"] and set(np.unique(es.test.depth)) == {0.0, 2.5}
    assert (es.depth_max, es.depth_eval_crop) == (10.0, "eigen")  # DINOv2's 10 m cap; Eigen's crop
    with pytest.raises(EvalDataError, match="no such folder"):
        read_standard("nyuv2", str(tmp_path / "missing"), SIZE)


def test_every_standard_dataset_is_covered():
    assert set(STANDARD) == {"imagenet", "coco", "flickr30k", "pascal_voc", "ade20k", "nyuv2"}


def test_disjoint_splits_are_checked_by_key_and_content():
    train = EvalSplit(["a", "b"], [b"1", b"2"])
    check_disjoint(EvalSet("toy", train, EvalSplit(["c"], [b"3"])))
    with pytest.raises(EvalDataError, match="share keys"):
        check_disjoint(EvalSet("toy", train, EvalSplit(["b"], [b"3"])))
    with pytest.raises(EvalDataError, match="'c' is also in probe-train"):
        check_disjoint(EvalSet("toy", train, EvalSplit(["c"], [b"2"])))
