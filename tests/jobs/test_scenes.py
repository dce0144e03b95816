import numpy as np
import pyarrow.parquet as pq
import pytest

from tipslab.jobs.data import scenes
from tipslab.jobs.data.shards import decode_png, read_manifest, shard_files

SEEDS = range(40)


def _expected_maps(scene, size):
    """Segmentation/depth/visible counts rebuilt independently: per pixel, the nearest cover wins."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    objs = scene["objects"]
    masks = np.stack([scenes._shape_mask(o["shape"], xs, ys, o["x"], o["y"], o["radius"],
                                         o["angle"]) for o in objs])
    depths = np.array([o["depth"] for o in objs], np.float32)[:, None, None]
    covered = masks.any(0)
    nearest = np.where(masks, depths, np.inf).argmin(0)
    classes = np.array([o["class_id"] for o in objs])
    seg = np.where(covered, classes[nearest], 0).astype(np.uint8)
    depth = np.where(covered, depths[nearest, 0, 0], scenes.BACKGROUND_DEPTH).astype(np.float32)
    visible = [int((covered & (nearest == i)).sum()) for i in range(len(objs))]
    return masks, seg, depth, visible


def test_deterministic_by_seed():
    a, b, c = scenes.scene_row(7, "train"), scenes.scene_row(7, "train"), scenes.scene_row(8, "train")
    assert a == b
    assert a["image"] != c["image"] and a["key"] != c["key"]
    r1, r2 = scenes.render_scene(7), scenes.render_scene(7)
    assert np.array_equal(r1["image"], r2["image"]) and r1["objects"] == r2["objects"]
    # the caption stream is separate: changing caption noise never moves a pixel
    assert np.array_equal(scenes.render_scene(7, web_noise=1.0)["image"], r1["image"])


def test_ground_truth_matches_objects_and_occlusion():
    occluded = 0
    for seed in SEEDS:
        s = scenes.render_scene(seed)
        assert s["image"].shape == (112, 112, 3) and s["image"].dtype == np.uint8
        assert s["segmentation"].dtype == np.uint8 and s["depth"].dtype == np.float32
        masks, seg, depth, visible = _expected_maps(s, 112)
        assert np.array_equal(s["segmentation"], seg)
        assert np.array_equal(s["depth"], depth)
        assert set(np.unique(s["depth"])) <= {scenes.BACKGROUND_DEPTH} | {
            np.float32(o["depth"]) for o in s["objects"]}
        for o, m, v in zip(s["objects"], masks, visible):
            assert o["visible_pixels"] == v
            assert o["area"] == int(m.sum())
            assert scenes.CLASSES[o["class_id"]] == o["shape"]
            assert 2.0 <= o["depth"] <= 8.0
            assert v >= 0.4 * o["area"] > 0  # every object at least partly visible
            rows, cols = np.nonzero(m)
            assert max(np.ptp(rows), np.ptp(cols)) + 1 >= 14  # at least ~one 14 px patch
            assert 0 < rows.min() and rows.max() < 111 and 0 < cols.min() and cols.max() < 111
            occluded += v < o["area"]
        best = max(s["objects"], key=lambda o: o["visible_pixels"])
        assert s["label"] == best["class_id"]
    assert occluded > 0, "no scene exercised occlusion"


def test_object_counts_and_attributes_vary():
    all_objs = [o for seed in range(60) for o in scenes.render_scene(seed)["objects"]]
    counts = {len(scenes.render_scene(seed)["objects"]) for seed in range(60)}
    assert counts == {1, 2, 3}
    assert {o["shape"] for o in all_objs} == set(scenes.CLASSES[1:])
    assert {o["colour"] for o in all_objs} == set(scenes.COLOURS)
    assert {o["size"] for o in all_objs} == {"small", "large"}
    assert all(len(scenes.render_scene(s, max_objects=1)["objects"]) == 1 for s in range(5))


def test_synthetic_caption_describes_every_object():
    for seed in SEEDS:
        s = scenes.render_scene(seed)
        cap = s["synthetic_caption"]
        assert cap == cap.lower()
        for o in s["objects"]:
            assert f"{o['size']} {o['colour']} {o['shape']}" in cap
        n = len(s["objects"])
        assert cap.startswith(f"{scenes._NUMBERS[n]} shape")
        if n >= 2:
            assert any(w in cap for w in scenes.RELATION_WORDS)
        assert any(w in cap for w in ("left", "right", "top", "bottom", "centre"))


def test_relation_words():
    a = {"x": 10.0, "y": 10.0, "depth": 3.0}
    b = {"x": 90.0, "y": 80.0, "depth": 6.0}
    assert scenes.relation_words(a, b, 112) == ["left of", "above", "in front of"]
    assert scenes.relation_words(b, a, 112) == ["right of", "below", "behind"]
    assert scenes.relation_words(a, {**a, "x": 12.0}, 112) == ["next to"]


def test_web_captions_are_short_and_noisy():
    caps = [scenes.render_scene(s, web_noise=0.0) for s in range(30)]
    for s in caps:
        words = set(scenes.caption_tags(s["web_caption"]))
        objs = {o["shape"] for o in s["objects"]} | {o["colour"] for o in s["objects"]}
        assert words and words <= objs, s["web_caption"]
        assert len(s["web_caption"].split()) <= 8
    noisy = [scenes.render_scene(s, web_noise=1.0)["web_caption"] for s in range(30)]
    assert all(scenes.caption_tags(c) == [] for c in noisy)
    assert len(set(noisy)) > 5
    mixed = [scenes.render_scene(s, web_noise=0.3)["web_caption"] for s in range(200)]
    off = sum(scenes.caption_tags(c) == [] for c in mixed)
    assert 30 <= off <= 100


def test_scene_row_roundtrip():
    s = scenes.render_scene(3)
    row = scenes.scene_row(3, "probe_test")
    assert row["key"] == "probe_test-00000003"
    assert row["width"] == row["height"] == 112 and row["label"] == s["label"]
    assert np.array_equal(decode_png(row["image"]), s["image"])
    assert np.array_equal(decode_png(row["segmentation"]), s["segmentation"])
    depth_mm = decode_png(row["depth"])
    assert depth_mm.dtype == np.uint16
    assert np.abs(depth_mm / 1000.0 - s["depth"]).max() <= 0.001
    assert row["tags"] == scenes.caption_tags(s["web_caption"], s["synthetic_caption"])
    assert {o["shape"] for o in s["objects"]} <= set(row["tags"])
    assert scenes.caption_tags("Two CIRCLES and an orange thing", None) == ["circle", "orange"]


def test_split_seeds_are_disjoint():
    spans = [set(scenes.split_seeds(1000, split=sp, seed=5)) for sp in scenes.SPLIT_OFFSETS]
    assert all(len(s) == 1000 for s in spans)
    assert not (spans[0] & spans[1] or spans[0] & spans[2] or spans[1] & spans[2])
    with pytest.raises(ValueError):
        scenes.split_seeds(10, split="train", seed=scenes.SPLIT_STRIDE - 5)
    with pytest.raises(ValueError):
        scenes.split_seeds(10, split="validation")


def test_generate_scenes(tmp_path):
    m = scenes.generate_scenes(str(tmp_path / "a"), 10, split="probe_train", seed=2,
                               rows_per_shard=4, size=56)
    assert m["source"] == "scenes:probe_train:seed=2:size=56"
    assert m["num_rows"] == 10 and [s["num_rows"] for s in m["shards"]] == [4, 4, 2]
    assert read_manifest(tmp_path / "a") == m
    rows = [r for f in shard_files(tmp_path / "a") for r in pq.read_table(f).to_pylist()]
    start = scenes.SPLIT_OFFSETS["probe_train"] + 2
    assert [r["key"] for r in rows] == [f"probe_train-{start + i:08d}" for i in range(10)]
    assert decode_png(rows[0]["image"]).shape == (56, 56, 3)
    again = scenes.generate_scenes(str(tmp_path / "b"), 10, split="probe_train", seed=2,
                                   rows_per_shard=4, size=56)
    assert again["content_hash"] == m["content_hash"]
    other = scenes.generate_scenes(str(tmp_path / "c"), 10, split="probe_train", seed=3,
                                   rows_per_shard=4, size=56)
    assert other["content_hash"] != m["content_hash"]
