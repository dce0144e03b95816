"""`data check`: the numbers of a shard set made here with known faults."""

import pytest
from conftest import jpeg, png_header_only, shards_without

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
        "training",
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
    # NULL captions (k1's web caption, most synthetic ones) are rows without that caption, fit for training
    assert report["training"] == {"fit": True, "caption_columns": ["web_caption", "synthetic_caption"], "problem": None}
    assert "caption columns: web_caption, synthetic_caption" in text and "warning" not in text


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


def test_bad_keys_are_bad_rows_and_a_missing_column_or_a_file_not_parquet_is_one_error(tmp_path):
    import hashlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tipslab.jobs.data.shards.format import ShardError

    def shard_set(name, table_bytes, rows=1):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "shard-00000.parquet").write_bytes(table_bytes)
        digest = hashlib.sha256(table_bytes).hexdigest()
        manifest = {"schema_version": 1, "source": "t", "num_rows": rows, "content_hash": ""}
        manifest["shards"] = [{"file": "shard-00000.parquet", "num_rows": rows, "sha256": digest}]
        manifest["content_hash"] = hashlib.sha256(digest.encode()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return str(folder)

    def parquet(rows):
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        return buf.getvalue().to_pybytes()

    good = {"key": "a", "image": jpeg(16, 16), "width": 16, "height": 16, "web_caption": "x", "tags": []}
    rows = [{**good, "key": None}, {**good, "key": None}, {**good, "key": ""}, good]
    report = check_shards(shard_set("keys", parquet(rows), 4), max_pixels=10**6)
    assert report["bad_images"]["by_reason"] == {"missing_key": 3} and report["duplicate_keys"]["count"] == 0
    assert report["bad_images"]["keys"] == ["row 0", "row 1", "row 2"]
    assert "missing_key" in format_report(report)
    no_image = shard_set("no_image", parquet([{k: v for k, v in good.items() if k != "image"}]))
    with pytest.raises(ShardError, match=r"shard-00000.parquet has no column 'image' \(its columns: key, width"):
        check_shards(no_image, max_pixels=10**6)
    with pytest.raises(ShardError, match=r"shard-00000.parquet is not a readable Parquet file"):
        check_shards(shard_set("garbage", b"PAR1 not parquet PAR1"), max_pixels=10**6)


def test_a_set_without_a_caption_column_is_reported_unfit_for_training(tmp_path, capsys):
    from tipslab.orchestrator.cli import main

    write_shards(made_rows(), str(tmp_path / "set"), source="test", rows_per_shard=4)
    shards_without(tmp_path / "set", "web_caption")
    report = check_shards(str(tmp_path / "set"), max_pixels=40_000_000)
    first = tmp_path / "set" / "shard-00000.parquet"
    assert report["training"] == {
        "fit": False,
        "caption_columns": ["synthetic_caption"],
        "problem": f"{first} has no column 'web_caption' (its columns: key, image, synthetic_caption, tags, "
        "width, height); training reads key, image, web_caption, synthetic_caption; a caption the loss "
        "does not use may be a column of NULLs",
    }
    assert report["missing_captions"]["web_caption"] == 6 and report["rows"] == 6  # the rest is still checked
    assert main(["data", "check", str(tmp_path / "set")]) == 0  # a report: probe splits need no caption
    out = capsys.readouterr().out.splitlines()
    warning = f"warning: not fit for training: {report['training']['problem']}"
    assert out[-2:] == ["caption columns: synthetic_caption", warning]
    # for a script: the same report, then exit 1 naming the problem
    assert main(["data", "check", str(tmp_path / "set"), "--for-training"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == warning and "is not fit for training" in captured.err
    shards_without(tmp_path / "set", "synthetic_caption")
    report = check_shards(str(tmp_path / "set"), max_pixels=40_000_000)
    assert report["training"]["caption_columns"] == [] and "caption columns: none" in format_report(report)
    assert "no column 'web_caption', 'synthetic_caption'" in report["training"]["problem"]
