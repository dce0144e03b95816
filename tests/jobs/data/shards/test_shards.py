import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from tipslab.jobs.data.shards import format as shards
from tipslab.jobs.data.shards.format import (
    SHARD_SCHEMA,
    ShardError,
    decode_normals,
    decode_png,
    encode_normals,
    encode_png,
    read_manifest,
    shard_files,
    verify_shards,
    write_shards,
)


def _rows(n, *, eval_cols=True, tweak=None):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
        row = {
            "key": f"k-{i:04d}",
            "image": encode_png(img),
            "web_caption": None if i % 3 == 0 else f"web {i}",
            "synthetic_caption": f"a red circle number {i}",
            "tags": ["circle", "red"],
            "width": 6,
            "height": 8,
        }
        if eval_cols:
            row["label"] = i % 4
            row["segmentation"] = encode_png(np.full((8, 6), i % 4, np.uint8))
            row["depth"] = encode_png(np.full((8, 6), 1000 + i, np.uint16))
            row["instances"] = encode_png(np.full((8, 6), i % 3, np.uint8))
            row["normals"] = encode_normals(np.broadcast_to([0.0, 1.0, 0.0], (8, 6, 3)))
        out.append(row)
    if tweak is not None:
        out[tweak]["synthetic_caption"] += " (changed)"
    return out


def test_schema_has_base_and_eval_columns():
    assert SHARD_SCHEMA.names == [
        "key",
        "image",
        "web_caption",
        "synthetic_caption",
        "tags",
        "width",
        "height",
        "label",
        "segmentation",
        "depth",
        "instances",
        "normals",
    ]
    assert shards.EVAL_COLUMNS == ("label", "segmentation", "depth", "instances", "normals")
    assert shards.SCHEMA_VERSION == 2
    assert str(SHARD_SCHEMA.field("tags").type) == "list<item: string>"
    assert str(SHARD_SCHEMA.field("width").type) == "int32"
    assert SHARD_SCHEMA.field("web_caption").nullable


def test_roundtrip_manifest_and_rows(tmp_path):
    rows = _rows(10)
    m = write_shards(rows, str(tmp_path), source="unit", rows_per_shard=4)
    assert m["schema_version"] == 2 and m["source"] == "unit" and m["num_rows"] == 10
    assert [s["num_rows"] for s in m["shards"]] == [4, 4, 2]
    assert [s["file"] for s in m["shards"]] == [f"shard-{i:05d}.parquet" for i in range(3)]
    assert read_manifest(tmp_path) == m == read_manifest(tmp_path / "manifest.json")
    assert json.loads((tmp_path / "manifest.json").read_text()) == m

    files = shard_files(tmp_path)
    assert files == [str((tmp_path / s["file"]).resolve()) for s in m["shards"]]
    assert all(os.path.isabs(f) for f in files)
    back = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert back == rows
    assert pq.read_schema(files[0]).names == SHARD_SCHEMA.names
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"] + [s["file"] for s in m["shards"]]
    assert shards.verify_shards(tmp_path) == m


def test_shards_without_eval_columns_are_valid(tmp_path):
    m = write_shards(_rows(3, eval_cols=False), str(tmp_path), source="web")
    (f,) = shard_files(tmp_path)
    table = pq.read_table(f)
    assert table.schema.names == ["key", "image", "web_caption", "synthetic_caption", "tags", "width", "height"]
    assert m["num_rows"] == 3 and table.num_rows == 3


def test_content_hash_is_deterministic_and_tracks_content(tmp_path):
    a = write_shards(_rows(6), str(tmp_path / "a"), source="s", rows_per_shard=4)
    b = write_shards(_rows(6), str(tmp_path / "b"), source="s", rows_per_shard=4)
    c = write_shards(_rows(6, tweak=5), str(tmp_path / "c"), source="s", rows_per_shard=4)
    assert a["content_hash"] == b["content_hash"]
    assert a["shards"][0]["sha256"] == c["shards"][0]["sha256"]
    assert a["shards"][1]["sha256"] != c["shards"][1]["sha256"]
    assert a["content_hash"] != c["content_hash"]
    assert shards.content_hash(s["sha256"] for s in a["shards"]) == a["content_hash"]


def test_rewrite_removes_stale_shards(tmp_path):
    write_shards(_rows(9), str(tmp_path), source="s", rows_per_shard=2)
    m = write_shards(_rows(3), str(tmp_path), source="s", rows_per_shard=2)
    assert len(shard_files(tmp_path)) == 2 and m["num_rows"] == 3
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [s["file"] for s in m["shards"]]


def test_empty_dataset(tmp_path):
    m = write_shards([], str(tmp_path), source="empty")
    assert m["num_rows"] == 0 and m["shards"] == [] and shard_files(tmp_path) == []


def test_bad_rows_are_rejected(tmp_path):
    bad = _rows(2)
    del bad[1]["image"]
    with pytest.raises(ShardError, match="image"):
        write_shards(bad, str(tmp_path), source="s")
    extra = _rows(2)
    extra[1]["colour"] = "red"
    with pytest.raises(ShardError, match="colour"):
        write_shards(extra, str(tmp_path), source="s")


def test_shard_error_names_the_file(tmp_path):
    assert issubclass(ShardError, ValueError)
    missing = tmp_path / "nope" / "manifest.json"
    with pytest.raises(ShardError, match=str(missing)):
        read_manifest(missing)
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(ShardError, match=str(path)):
        read_manifest(tmp_path)
    path.write_text(json.dumps({"schema_version": 1, "source": "x"}))
    with pytest.raises(ShardError, match="missing keys"):
        read_manifest(path)

    m = write_shards(_rows(5), str(tmp_path), source="s", rows_per_shard=2)
    path.write_text(json.dumps({**m, "num_rows": 99}))
    with pytest.raises(ShardError, match=f"{path}.*num_rows"):
        read_manifest(path)
    path.write_text(json.dumps({**m, "schema_version": 99}))
    with pytest.raises(ShardError, match="schema_version"):
        read_manifest(path)
    escape = [{**m["shards"][0], "file": "../x.parquet"}] + m["shards"][1:]
    path.write_text(json.dumps({**m, "shards": escape}))
    with pytest.raises(ShardError, match="file name"):
        read_manifest(path)
    path.write_text(json.dumps({**m, "schema_version": 1}))  # datasets of schema 1 still read
    assert read_manifest(path)["schema_version"] == 1
    path.write_text(json.dumps(m))
    (tmp_path / m["shards"][1]["file"]).unlink()
    with pytest.raises(ShardError, match=m["shards"][1]["file"]):
        shard_files(tmp_path)


def test_png_roundtrips():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    seg = rng.integers(0, 4, size=(5, 7), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)
    assert np.array_equal(decode_png(encode_png(seg)), seg)

    depth_m = rng.uniform(0.0, 65.0, size=(5, 7)).astype(np.float32)
    mm = np.rint(depth_m * 1000).astype(np.uint16)
    mm[0, 0], mm[0, 1] = 0, 65535  # both ends of the 16-bit range
    back = decode_png(encode_png(mm))
    assert back.dtype == np.uint16 and np.array_equal(back, mm)
    assert np.abs(back[1:].astype(np.float64) / 1000 - depth_m[1:]).max() <= 0.0005 + 1e-6
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2), np.float32))


def test_normals_png_roundtrip():
    rng = np.random.default_rng(2)
    n = rng.normal(size=(6, 5, 3))
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    n[0, 0] = 0.0  # a pixel without a surface
    png = encode_normals(n)
    assert decode_png(png).dtype == np.uint8 and decode_png(png).shape == (6, 5, 3)
    expected = np.rint((n + 1) * 127.5).astype(np.uint8)
    expected[0, 0] = 0  # no surface: black
    assert np.array_equal(decode_png(png), expected)
    back = decode_normals(png)
    assert np.abs(back - n).max() <= 1 / 255 + 1e-6
    assert (back[0, 0] == 0).all()
    with pytest.raises(ValueError):
        encode_normals(np.zeros((4, 4)))


def test_s3_roundtrip_verify_and_tamper(s3, tmp_path):
    import boto3

    prefix = f"{s3}/sets/a"
    rows = _rows(7)
    m = write_shards(rows, prefix, source="unit", rows_per_shard=3)
    assert read_manifest(prefix) == m == read_manifest(f"{prefix}/manifest.json")
    files = shard_files(prefix)
    assert files == [f"{prefix}/shard-{i:05d}.parquet" for i in range(3)]
    assert [r for f in files for r in pq.read_table(f).to_pylist()] == rows  # pyarrow reads s3:// URIs
    assert verify_shards(prefix) == m
    local = write_shards(_rows(7), str(tmp_path), source="unit", rows_per_shard=3)
    assert local["content_hash"] == m["content_hash"]  # same bytes wherever they are stored

    client = boto3.client("s3")
    key = "sets/a/shard-00001.parquet"
    body = bytearray(client.get_object(Bucket="tipslab-test", Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket="tipslab-test", Key=key, Body=bytes(body))
    read_manifest(prefix)  # the manifest itself is intact
    with pytest.raises(ShardError, match=f"{prefix}/shard-00001.parquet does not match"):
        verify_shards(prefix)
    client.delete_object(Bucket="tipslab-test", Key="sets/a/shard-00002.parquet")
    with pytest.raises(ShardError, match="shard-00002.parquet .*does not exist"):
        shard_files(prefix)
    with pytest.raises(ShardError, match=f"not found: {s3}/sets/b/manifest.json"):
        read_manifest(f"{s3}/sets/b")

    # rewriting a folder removes the shards the new manifest does not list
    write_shards(_rows(2), prefix, source="unit", rows_per_shard=3)
    listed = client.list_objects_v2(Bucket="tipslab-test", Prefix="sets/a/")["Contents"]
    # pyarrow leaves an empty folder marker ("sets/a/") after deletes
    keys = sorted(o["Key"] for o in listed if not o["Key"].endswith("/"))
    assert keys == ["sets/a/manifest.json", "sets/a/shard-00000.parquet"]
