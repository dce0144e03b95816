"""Ingestion of each format from tiny files made here, with one bad row of each kind."""

import csv
import io
import json
import tarfile

import numpy as np
import pytest
from conftest import png_header_only

from tipslab.jobs.bench.ingest import photo_jpeg
from tipslab.jobs.data.ingest.sources import FORMATS, IngestError, ingest
from tipslab.jobs.data.shards.format import read_manifest
from tipslab.jobs.data.shards.rewrite import iter_rows
from tipslab.jobs.data.shards.rows import TooManyBadRows

GOOD = {"g0": "a red cube on a wooden table", "g1": "two small blue spheres", "g2": "green cones"}


def images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    cut = photo_jpeg(rng, 64)
    return {
        "g0": photo_jpeg(rng, 32),
        "g1": photo_jpeg(rng, 40),
        "g2": photo_jpeg(rng, 48),
        "trunc": cut[: len(cut) * 3 // 5],
        "text": b"not an image, just text",
        "empty": photo_jpeg(rng, 16),
        "wrongtype": photo_jpeg(rng, 16),
        "huge": png_header_only(8000, 8000),
    }


def captions() -> dict:
    return {
        **GOOD,
        "trunc": "a cut photo",
        "text": "a text file",
        "empty": "   ",
        "wrongtype": 5,
        "huge": "a huge blank picture",
    }


# Expected bad rows per format: each kind once (CSV cells are all strings, so a ragged line stands
# in for the wrong type there).
BAD = {"truncated": 1, "not_an_image": 1, "empty_caption": 1, "wrong_type": 1, "too_many_pixels": 1}
BAD_KEYS = {"trunc", "text", "empty", "wrongtype", "huge"}


def write_images(folder, data) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, payload in data.items():
        (folder / f"{key}.img").write_bytes(payload)


def make_webdataset(root):
    data, caps = images(), captions()
    (root / "tars").mkdir()
    parts = (["g0", "trunc", "text", "g1"], ["empty", "wrongtype", "huge", "g2"])
    for t, part in enumerate(parts):  # two tars, read in name order
        with tarfile.open(root / "tars" / f"{t:05d}.tar", "w") as tar:
            for key in part:
                members = {f"{key}.jpg": data[key], f"{key}.json": json.dumps({"caption": caps[key]}).encode()}
                if isinstance(caps[key], str):
                    members[f"{key}.txt"] = caps[key].encode()  # the wrong type lives in the json only
                for name, payload in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root / "tars", {}


def make_table(root, fmt):
    data, caps = images(), captions()
    write_images(root / "imgs", data)
    rows = [{"key": k, "image": f"imgs/{k}.img", "caption": caps[k]} for k in data]
    path = root / f"table.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            writer.writerow(["key", "image", "caption"])
            for r in rows:
                writer.writerow([r["key"], r["image"]] + ([] if r["key"] == "wrongtype" else [r["caption"]]))
    return path, {}


def make_coco(root):
    data, caps = images(), captions()
    write_images(root / "val", data)
    ids = {k: i + 1 for i, k in enumerate(data)}
    anns = [{"id": 100 + ids[k], "image_id": ids[k], "caption": caps[k]} for k in data]
    anns.append({"id": 1, "image_id": ids["g0"], "caption": "the first caption of g0"})
    doc = {"images": [{"id": ids[k], "file_name": f"{k}.img"} for k in data], "annotations": anns}
    (root / "captions.json").write_text(json.dumps(doc))
    return root / "captions.json", {"images": str(root / "val")}


def make(fmt, root):
    if fmt == "webdataset":
        return make_webdataset(root)
    if fmt == "coco":
        return make_coco(root)
    return make_table(root, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_keeps_good_rows_and_names_each_bad_one(fmt, tmp_path):
    src, options = make(fmt, tmp_path)
    named, progress = [], []
    result = ingest(
        fmt,
        str(src),
        str(tmp_path / "out"),
        max_pixels=40_000_000,
        max_bad_fraction=0.7,
        on_bad=named.append,
        on_progress=lambda done, total: progress.append((done, total)),
        **options,
    )
    # every source row counted as it is read, bad ones too; only COCO's image list tells the total first
    assert progress == [(done, 8 if fmt == "coco" else None) for done in range(1, 9)]
    rows = {r["key"]: r for r in iter_rows(str(tmp_path / "out"))}
    bad = result["bad_rows"]
    assert bad["rows_seen"] == 8 and result["rows"] == 3 == read_manifest(tmp_path / "out")["num_rows"]
    if fmt == "coco":  # COCO keys are image ids; the first caption by annotation id is kept
        assert sorted(rows) == ["1", "2", "3"]
        assert rows["1"]["web_caption"] == "the first caption of g0"
        assert rows["2"]["web_caption"] == GOOD["g1"]
        assert set(bad["keys"]) == {"4", "5", "6", "7", "8"}
    else:
        assert sorted(rows) == ["g0", "g1", "g2"]
        assert [rows[k]["web_caption"] for k in GOOD] == list(GOOD.values())
        assert rows["g0"]["tags"] == ["cube", "red", "table", "wooden"]
        named_keys = {e.key for e in named}
        assert named_keys == (BAD_KEYS - {"wrongtype"} | {f"table.{fmt}:8"} if fmt in ("csv", "tsv") else BAD_KEYS)
    expected = dict(BAD)
    if fmt in ("csv", "tsv"):
        expected["wrong_columns"] = expected.pop("wrong_type")
    assert bad["counts"] == expected and bad["bad"] == 5
    assert [(r["width"], r["height"]) for r in rows.values()] == [(32, 32), (40, 40), (48, 48)]
    assert all(r["synthetic_caption"] is None for r in rows.values())


def test_join_fills_synthetic_captions_by_key_and_duplicates_are_bad(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "a.jpg").write_bytes(photo_jpeg(rng, 24))
    (tmp_path / "b.jpg").write_bytes(photo_jpeg(rng, 24))
    lines = [
        {"key": "a", "image": "a.jpg", "caption": "a cat"},
        {"key": "b", "image": "b.jpg", "caption": "a dog"},
        {"key": "a", "image": "b.jpg", "caption": "again"},
    ]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "syn.csv").write_text("key,synthetic_caption\na,a black cat sitting on a red sofa\nzz,unused\nb,\n")
    result = ingest(
        "jsonl",
        str(tmp_path / "t.jsonl"),
        str(tmp_path / "out"),
        max_pixels=10**6,
        max_bad_fraction=0.5,
        join=str(tmp_path / "syn.csv"),
    )
    rows = {r["key"]: r for r in iter_rows(str(tmp_path / "out"))}
    assert rows["a"]["synthetic_caption"] == "a black cat sitting on a red sofa"
    assert rows["b"]["synthetic_caption"] is None
    assert rows["a"]["tags"] == ["black", "cat", "red", "sit", "sofa"]
    assert (result["joined"], result["join_unused"]) == (1, 1)
    assert result["bad_rows"]["counts"] == {"duplicate_key": 1}


def test_bad_fraction_stops_the_ingestion(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "ok.jpg").write_bytes(photo_jpeg(rng, 16))
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    lines = [{"key": f"k{i}", "image": "bad.jpg" if i % 3 == 0 else "ok.jpg", "caption": "x"} for i in range(30)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(TooManyBadRows) as err:
        ingest("jsonl", str(tmp_path / "t.jsonl"), str(tmp_path / "out"), max_pixels=10**6, max_bad_fraction=0.2)
    # checked at each bad row once 20 rows are seen: k21 is the 8th bad of 22, and nothing after it is read
    assert err.value.counts == {"not_an_image": 8} and err.value.keys[-1] == "k21"
    assert err.value.keys[:2] == ["k0", "k3"] and "'k0'" in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()
    ok = ingest("jsonl", str(tmp_path / "t.jsonl"), str(tmp_path / "out"), max_pixels=10**6, max_bad_fraction=0.4)
    assert (ok["rows"], ok["bad_rows"]["bad"]) == (20, 10)


def test_unreadable_sources_are_one_error(tmp_path):
    with pytest.raises(IngestError, match="no .tar files"):
        ingest("webdataset", str(tmp_path), str(tmp_path / "o"), max_pixels=1, max_bad_fraction=0)
    (tmp_path / "t.csv").write_text("path,caption\nx.jpg,hi\n")
    with pytest.raises(IngestError, match="no column 'image'.*--image-column"):
        ingest("csv", str(tmp_path / "t.csv"), str(tmp_path / "o"), max_pixels=1, max_bad_fraction=0)
    (tmp_path / "t.csv").write_text("image,text\nx.jpg,hi\n")
    with pytest.raises(IngestError, match="no column 'caption'.*--caption-column"):
        ingest("csv", str(tmp_path / "t.csv"), str(tmp_path / "o"), max_pixels=1, max_bad_fraction=0)


def outside_sources(tmp_path):
    """A private image beside the source folder, and tables and a COCO file whose rows name it
    with ../, with its absolute path and through a link in the source folder; one good row each."""
    rng = np.random.default_rng(3)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "private.jpg").write_bytes(photo_jpeg(rng, 16))
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.jpg").write_bytes(photo_jpeg(rng, 16))
    (src / "link.jpg").symlink_to(tmp_path / "outside" / "private.jpg")
    paths = {"ok": "ok.jpg", "up": "../outside/private.jpg", "abs": str(tmp_path / "outside" / "private.jpg")}
    paths["link"] = "link.jpg"
    (src / "t.csv").write_text("key,image,caption\n" + "".join(f"{k},{p},a photo\n" for k, p in paths.items()))
    (src / "t.jsonl").write_text(
        "".join(json.dumps({"key": k, "image": p, "caption": "a photo"}) + "\n" for k, p in paths.items())
    )
    ids = {k: i + 1 for i, k in enumerate(paths)}
    doc = {
        "images": [{"id": ids[k], "file_name": p} for k, p in paths.items()],
        "annotations": [{"id": i, "image_id": i, "caption": "a photo"} for i in ids.values()],
    }
    (src / "coco.json").write_text(json.dumps(doc))
    return src, ids


@pytest.mark.parametrize("fmt, name", [("csv", "t.csv"), ("jsonl", "t.jsonl"), ("coco", "coco.json")])
def test_paths_outside_the_source_folder_are_bad_rows_unless_allowed(fmt, name, tmp_path):
    src, ids = outside_sources(tmp_path)
    named = []
    result = ingest(
        fmt, str(src / name), str(tmp_path / "o"), max_pixels=10**6, max_bad_fraction=1.0, on_bad=named.append
    )
    refused = ["up", "abs", "link"] if fmt != "coco" else [str(ids[k]) for k in ("up", "abs", "link")]
    assert result["rows"] == 1 and result["bad_rows"]["counts"] == {"outside_source": 3}
    assert [e.key for e in named] == refused and "outside the source folder" in str(named[0])
    assert "--allow-outside" in str(named[0])
    allowed = ingest(
        fmt, str(src / name), str(tmp_path / "a"), max_pixels=10**6, max_bad_fraction=0.0, allow_outside=True
    )
    assert allowed["rows"] == 4 and allowed["bad_rows"]["bad"] == 0


def test_malformed_sources_are_one_error_naming_the_file_or_a_bad_row(tmp_path):
    def run(fmt, name, text, **kw):
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        return ingest(fmt, str(tmp_path / name), str(tmp_path / "o"), max_pixels=10**6, max_bad_fraction=1.0, **kw)

    deep = "[" * 100_000 + "]" * 100_000
    named = []
    result = run("jsonl", "deep.jsonl", deep + "\n", on_bad=named.append)
    assert result["bad_rows"]["counts"] == {"bad_json": 1} and named[0].key == "deep.jsonl:1"
    with pytest.raises(IngestError, match=r"coco.json: nested too deeply"):
        run("coco", "coco.json", deep)
    doc = {"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"id": 1, "image_id": [1], "caption": "c"}]}
    with pytest.raises(IngestError, match=r"ids.json: annotations\[0\]: image_id \[1\] is not an integer or text"):
        run("coco", "ids.json", json.dumps(doc))
    with pytest.raises(IngestError, match=r"latin.csv: not UTF-8 text"):
        run("csv", "latin.csv", "key,image,caption\nx,x.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(IngestError, match=r"wide.csv: line \d+: not a readable csv table \(field larger"):
        run("csv", "wide.csv", "key,image,caption\nx,x.jpg," + "w" * 200_000 + "\n")


def test_ingest_to_s3(s3, tmp_path):
    src, _ = make_table(tmp_path, "jsonl")
    result = ingest("jsonl", str(src), f"{s3}/ingested", max_pixels=40_000_000, max_bad_fraction=0.7, rows_per_shard=2)
    manifest = read_manifest(f"{s3}/ingested")
    assert (result["rows"], manifest["num_rows"], len(manifest["shards"])) == (3, 3, 2)
    assert result["content_hash"] == manifest["content_hash"]
    assert [r["key"] for r in iter_rows(f"{s3}/ingested")] == ["g0", "g1", "g2"]


def test_webdataset_tars_in_parallel_ray_tasks_sum_their_counts(ray_session, tmp_path):
    from tipslab.jobs.data.ingest.parallel import ingest_webdataset_parallel

    src, _ = make_webdataset(tmp_path)
    named, progress = [], []
    result = ingest_webdataset_parallel(
        str(src),
        str(tmp_path / "out"),
        max_pixels=40_000_000,
        max_bad_fraction=0.7,
        rows_per_shard=1,
        on_bad=named.append,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    serial = ingest(
        "webdataset", str(src), str(tmp_path / "serial"), max_pixels=40_000_000, max_bad_fraction=0.7, rows_per_shard=1
    )
    assert result["tasks"] == 2 and result["bad_rows"]["counts"] == BAD == serial["bad_rows"]["counts"]
    assert result["bad_rows"]["rows_seen"] == 8 and {e.key for e in named} == BAD_KEYS
    assert len(progress) == 2 and progress[-1] == (8, None)  # the rows read, as each tar's task ends
    assert [r["key"] for r in iter_rows(str(tmp_path / "out"))] == ["g0", "g1", "g2"]
    assert [s["file"] for s in read_manifest(tmp_path / "out")["shards"]] == [
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-10000.parquet",
    ]
    # Each task writes the same bytes the serial path writes for its rows.
    assert [s["sha256"] for s in read_manifest(tmp_path / "out")["shards"]] == [
        s["sha256"] for s in read_manifest(tmp_path / "serial")["shards"]
    ]
    with pytest.raises(TooManyBadRows, match="5 bad of 8"):
        ingest_webdataset_parallel(str(src), str(tmp_path / "o2"), max_pixels=40_000_000, max_bad_fraction=0.5)
