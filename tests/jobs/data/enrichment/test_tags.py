"""Tag2Text-style tags: known captions, the scenes' words, the vocabulary, and re-tagging shards."""

import importlib

import pytest

from tipslab.jobs.data.enrichment.tags import build_vocab, caption_tags, parse_caption, tag_shards
from tipslab.jobs.data.shards.format import read_manifest, write_shards
from tipslab.jobs.data.shards.rewrite import iter_rows

KNOWN = [
    (
        "A red alarm clock is on a wooden desk",  # Tag2Text's own example
        {"objects": ["alarm clock", "desk"], "attributes": ["red", "wooden"], "actions": []},
    ),
    (
        "Two men riding horses on the beach",
        {"objects": ["beach", "horse", "man"], "attributes": [], "actions": ["ride"]},
    ),
    (
        "the large red metal cube is left of and in front of the blue sphere.",
        {
            "objects": ["cube", "sphere"],
            "attributes": ["blue", "large", "metal", "red"],
            "actions": ["in front of", "left of"],
        },
    ),
    (
        "cats sitting on a sofa; a zebu grazing near the river",  # "zebu" is not in the lexicon
        {"objects": ["cat", "river", "sofa", "zebu"], "attributes": [], "actions": ["graze", "near", "sit"]},
    ),
    (
        "an orange on a glass table, three orange cones",
        {"objects": ["cone", "orange", "table"], "attributes": ["glass", "orange"], "actions": []},
    ),
    ("DSC_0412.jpg", {"objects": [], "attributes": [], "actions": []}),
    (
        "a photo of a striped green rubber cylinder 3d render",
        {"objects": ["cylinder"], "attributes": ["green", "rubber", "striped"], "actions": []},
    ),
]


@pytest.mark.parametrize("caption,expected", KNOWN)
def test_known_captions(caption, expected):
    assert parse_caption(caption) == expected


def _scene_words() -> dict[str, set[str]]:
    """Shape, colour, size, material and pattern words of the scene generator, wherever it keeps
    them, plus the ones its captions are known to use."""
    words = {
        "objects": {"sphere", "cube", "cylinder", "cone", "pyramid", "circle", "square", "triangle"},
        "attributes": {
            "red",
            "green",
            "blue",
            "yellow",
            "purple",
            "orange",
            "small",
            "large",
            "metal",
            "rubber",
            "plastic",
            "wooden",
            "glass",
            "striped",
            "checkered",
        },
    }
    for module in ("layout", "render", "generate", "geometry", "captions"):
        mod = importlib.import_module(f"tipslab.jobs.data.scenes.{module}")
        for name, kind in (
            ("SHAPES", "objects"),
            ("COLOURS", "attributes"),
            ("MATERIALS", "attributes"),
            ("SIZES", "attributes"),
            ("PATTERNS", "attributes"),
            ("WALLS", "attributes"),
            ("GROUNDS", "attributes"),
            ("GROUND_TEXTURES", "attributes"),
        ):
            words[kind].update(w for w in getattr(mod, name, ()) if w != "plain")
        words["objects"].update(c for c in getattr(mod, "CLASSES", ()) if c != "background")
        words["skies"] = set(getattr(mod, "SKIES", ())) | words.get("skies", set())
    return words


def test_every_scene_word_is_a_tag():
    words = _scene_words()
    for sky in words.get("skies", ()):  # "clear sky"
        *attributes, noun = sky.split()
        assert parse_caption(f"under an {sky}") == {
            "objects": [noun],
            "attributes": attributes,
            "actions": ["under"],
        }, sky
    for shape in words["objects"]:
        assert parse_caption(f"two {shape}s and a {shape}")["objects"] == [shape], shape
    for attribute in words["attributes"]:
        assert parse_caption(f"a {attribute} box")["attributes"] == [attribute], attribute


def test_vocabulary_keeps_tags_seen_in_enough_rows():
    rows = [caption_tags(c) for c in ("a red cube", "a red cube and a red cube", "a blue cube", "a dog")]
    assert build_vocab(rows, min_freq=1) == ["cube", "red", "blue", "dog"]
    assert build_vocab(rows, min_freq=2) == ["cube", "red"]  # counted once per row
    assert build_vocab(rows, min_freq=4) == []
    with pytest.raises(ValueError):
        build_vocab(rows, min_freq=0)


def _rows():
    caps = [
        ("a red cube", "a large red metal cube next to a blue sphere"),
        ("red cube", None),
        ("untitled", "a small blue rubber sphere"),
        ("a dog", None),
    ]
    return [
        {
            "key": f"k{i}",
            "image": b"png",
            "web_caption": w,
            "synthetic_caption": s,
            "tags": ["old"],
            "width": 1,
            "height": 1,
        }
        for i, (w, s) in enumerate(caps)
    ]


def test_tag_shards_rewrites_in_place_and_writes_the_vocabulary(tmp_path):
    shards = tmp_path / "set"
    write_shards(_rows(), str(shards), source="test", rows_per_shard=3)
    (shards / "README").write_text("kept")
    result = tag_shards(str(shards), min_freq=2)
    assert (shards / "tag_vocab.txt").read_text().splitlines() == ["blue", "cube", "red", "sphere"]  # ties
    tags = {r["key"]: r["tags"] for r in iter_rows(str(shards))}
    assert tags == {"k0": ["blue", "cube", "red", "sphere"], "k1": ["cube", "red"], "k2": ["blue", "sphere"], "k3": []}
    manifest = read_manifest(shards)
    assert manifest["num_rows"] == 4 and [s["num_rows"] for s in manifest["shards"]] == [3, 1]
    assert manifest["source"] == "test+tags:min_freq=2" and (shards / "README").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # nothing left beside it
    assert (result["vocab_size"], result["tagged_fraction"], result["mean_tags"]) == (4, 0.75, 2.0)


def test_tag_shards_to_another_folder_leaves_the_source(tmp_path):
    write_shards(_rows(), str(tmp_path / "set"), source="test")
    before = read_manifest(tmp_path / "set")["content_hash"]
    tag_shards(str(tmp_path / "set"), min_freq=1, out=str(tmp_path / "tagged"), vocab_path=str(tmp_path / "vocab.txt"))
    assert read_manifest(tmp_path / "set")["content_hash"] == before
    assert len((tmp_path / "vocab.txt").read_text().splitlines()) == 10
    assert [r["tags"] for r in iter_rows(str(tmp_path / "tagged"))][3] == ["dog"]


def test_tag_shards_on_s3(s3):
    write_shards(_rows(), f"{s3}/set", source="test")
    with pytest.raises(ValueError, match="in place"):
        tag_shards(f"{s3}/set")
    result = tag_shards(f"{s3}/set", min_freq=2, out=f"{s3}/tagged")
    assert result["vocab"] == f"{s3}/tagged/tag_vocab.txt" and result["vocab_size"] == 4
    assert [r["tags"] for r in iter_rows(f"{s3}/tagged")][1] == ["cube", "red"]
