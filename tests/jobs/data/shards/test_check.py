"""`data check`: the numbers of a shard set made here with known faults."""

import pytest
from conftest import jpeg, png_header_only

from tipslab.jobs.data.shards.check import check_shards, format_report
from tipslab.jobs.data.shards.format import write_shards


def made_rows():
    cut = jpeg(64, 64)
    rows = [
        ("k0", jpeg(32, 24), 32, 24, "a red cube", "a large red metal cube on the floor", ["cube", "red"]),
        ("k1", jpeg(64, 48), 64, 48, None, "two blue spheres", ["blue", "sphere"]),
        ("k2", cut[: len(cut) // 2], 64, 64, "broken", None, []),
        ("k1", jpeg(40, 40), 40, 40, "  ", None, []),
        ("k4", png_header_only(8000, 8000), 8000, 8000, "huge", None, []),
        ("k5", jpeg(32, 32), 30, 32, "x y", None, []),
    ]
    return [
        {"key": k, "image": img, "width": w, "height": h, "web_caption": web, "synthetic_caption": syn, "tags": tags}
        for k, img, w, h, web, syn, tags in rows
    ]


def test_check_reports_faults_and_distributions(tmp_path):
    write_shards(made_rows(), str(tmp_path / "set"), source="test", rows_per_shard=4)
    report = check_shards(str(tmp_path / "set"), max_pixels=40_000_000)
    assert list(report) == [
        "shards",
        "rows",
        "shard_files",
        "content_hash",
        "bad_images",
        "duplicate_keys",
        "missing_captions",
        "image_width",
        "image_height",
        "caption_words",
        "tags",
    ]
    assert (report["rows"], report["shard_files"]) == (6, 2)
    assert report["bad_images"]["by_reason"] == {"too_many_pixels": 1, "truncated": 1, "wrong_size": 1}
    assert report["bad_images"]["keys"] == ["k2", "k4", "k5"] and report["bad_images"]["count"] == 3
    assert report["duplicate_keys"] == {"count": 1, "keys": ["k1"]}
    assert report["missing_captions"] == {"web_caption": 2, "synthetic_caption": 4, "all": 1}
    assert report["image_width"] == pytest.approx({"min": 32, "median": 40, "p95": 61.6, "max": 64})
    assert report["image_height"] == pytest.approx({"min": 24, "median": 40, "p95": 47.2, "max": 48})
    assert report["caption_words"]["web_caption"] == pytest.approx({"min": 1, "median": 1.5, "p95": 2.85, "max": 3})
    assert report["caption_words"]["synthetic_caption"] == pytest.approx(
        {"min": 3, "median": 5.5, "p95": 7.75, "max": 8}
    )
    assert report["tags"] == {
        "rows_with_tags": 0.3333,
        "mean_per_row": 0.667,
        "distinct": 4,
        "vocab_file": None,
        "vocab_size": None,
    }
    (tmp_path / "set" / "tag_vocab.txt").write_text("cube\nred\nblue\n")
    report = check_shards(str(tmp_path / "set"), max_pixels=40_000_000)
    assert report["tags"]["vocab_size"] == 3
    text = format_report(report)
    assert "6 rows in 2 shards" in text and "k2: truncated" in text and "duplicate keys: 1 (k1)" in text


def test_empty_distributions_are_null(tmp_path):
    rows = made_rows()[2:3]
    write_shards(rows, str(tmp_path / "set"), source="test")
    report = check_shards(str(tmp_path / "set"), max_pixels=10**6)
    assert report["image_width"] == {"min": None, "median": None, "p95": None, "max": None}
    assert "image width: none" in format_report(report)


def test_check_reads_s3(s3):
    write_shards(made_rows(), f"{s3}/set", source="test")
    report = check_shards(f"{s3}/set", max_pixels=40_000_000)
    assert (report["rows"], report["bad_images"]["count"], report["duplicate_keys"]["count"]) == (6, 3, 1)
