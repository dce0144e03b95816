import pytest
from conftest import REPO, jpeg, shards_without
from omegaconf import OmegaConf

from tipslab.orchestrator.config import (
    ConfigError,
    config_hash,
    flatten,
    load_experiment,
    nest,
    parse_overrides,
    to_dict,
)

BASE = REPO / "ablations" / "base" / "tips_tiny.yaml"


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_base_config_loads_with_layer_defaults(home):
    cfg = load_experiment(BASE)
    assert cfg.model.size == "tiny" and cfg.model.patch_size == 14
    assert cfg.loss.distill_weight == pytest.approx(0.1) and cfg.loss.mim_weight == pytest.approx(0.2)
    assert cfg.train.teacher_momentum == pytest.approx(0.992)  # a layer default, not in the file
    assert cfg.data.root == str(home / "data" / "scenes")  # resolved to an absolute path


def test_command_line_overrides_are_typed_and_win(home):
    cfg = load_experiment(BASE, ["train.steps=7", "loss.mim_weight=0", "model.size=S"])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.loss.mim_weight == 0.0 and cfg.model.size == "S"


def test_unknown_key_names_file_and_dotted_path(tmp_path, home):
    path = write(tmp_path, "model:\n  size: tiny\nloss:\n  mim_wieght: 1\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(path) in str(err.value) and "loss.mim_wieght" in str(err.value)


def test_wrong_type_names_file_and_key(tmp_path, home):
    path = write(tmp_path, "train:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: train\.steps: .*many"):
        load_experiment(path)


def test_bad_command_line_item_names_command_line(home):
    with pytest.raises(ConfigError, match="command line: data.batch_size"):
        load_experiment(BASE, ["data.batch_size=big"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_experiment(BASE, ["train.steps"])
    with pytest.raises(ConfigError, match="command line: model.nonsense"):
        load_experiment(BASE, ["model.nonsense=1"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.size=XXL", "model.size"),
        ("loss.caption_mode=both", "loss.caption_mode"),
        ("loss.mask_ratio=1.5", "loss.mask_ratio"),
        ("train.strategy=zero3", "train.strategy"),
        ("loss.mim_weight=-1", "loss.mim_weight"),
        ("model.image_size=100", "model.image_size"),
        ("eval.retrieval_token=cls_3", "eval.retrieval_token"),
        ("train.steps=0", "train.steps"),
        ("data.local_crops=0", "data.local_crops"),
    ],
)
def test_bad_values_are_rejected_with_their_key(override, key, home):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_experiment(BASE, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_experiment(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_experiment(write(tmp_path, "- a\n- b\n"))


def test_nest_flatten_and_hash():
    assert nest({"a.b": 1, "a.c": 2, "d": {"e.f": 3}}) == {"a": {"b": 1, "c": 2}, "d": {"e": {"f": 3}}}
    assert flatten({"a": {"b": 1, "c": {"d": 2}}}) == {"a.b": 1, "a.c.d": 2}
    assert parse_overrides(["x=1", "y=true", "z=a b"]) == {"x": 1, "y": True, "z": "a b"}
    one = {"a": 1, "b": {"c": 2}}
    assert config_hash(one) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash(one) != config_hash({"a": 1, "b": {"c": 3}})


def test_resolved_config_round_trips(home):
    cfg = load_experiment(BASE)
    assert OmegaConf.to_container(OmegaConf.create(to_dict(cfg))) == to_dict(cfg)


def test_tag_vocabulary_sets_num_tags_and_is_required_by_the_tag_loss(tmp_path, home):
    vocab = tmp_path / "tags.txt"
    vocab.write_text("circle\nsquare\n\nred\n")
    cfg = load_experiment(BASE, [f"data.tag_vocab={vocab}", "loss.tag_weight=1"])
    assert cfg.model.num_tags == 3 and cfg.data.tag_vocab == str(vocab)
    with pytest.raises(ConfigError, match="data.tag_vocab: the tagging loss"):
        load_experiment(BASE, ["loss.tag_weight=1"])
    with pytest.raises(ConfigError, match="data.tag_vocab: no tag vocabulary"):
        load_experiment(BASE, [f"data.tag_vocab={tmp_path / 'absent.txt'}"])


def _manifests(root, content: str):
    for split in ("train", "probe_train", "probe_test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "manifest.json").write_text(f'{{"content_hash": "{content}-{split}", "num_rows": 1}}')


def test_config_hash_follows_content_not_paths(tmp_path, monkeypatch):
    """A resume from another folder, or from a copy of the same shards, is the same run."""
    hashes = []
    for where in ("one", "two"):
        monkeypatch.setenv("TIPSLAB_HOME", str(tmp_path / where))
        monkeypatch.chdir(tmp_path.joinpath(where).mkdir() or tmp_path / where)
        hashes.append(config_hash(to_dict(load_experiment(BASE))))
    assert hashes[0] == hashes[1]  # scenes: the config alone determines the data

    _manifests(tmp_path / "copy_a", "abc")
    _manifests(tmp_path / "copy_b", "abc")
    _manifests(tmp_path / "other", "xyz")

    def shards(root):
        return config_hash(to_dict(load_experiment(BASE, ["data.source=shards", f"data.root={root}"])))

    assert shards(tmp_path / "copy_a") == shards(tmp_path / "copy_b")
    assert shards(tmp_path / "copy_a") != shards(tmp_path / "other")

    vocab_a, vocab_b = tmp_path / "a.txt", tmp_path / "b.txt"
    vocab_a.write_text("red\n")
    vocab_b.write_text("red\n")
    assert config_hash(to_dict(load_experiment(BASE, [f"data.tag_vocab={vocab_a}"]))) == config_hash(
        to_dict(load_experiment(BASE, [f"data.tag_vocab={vocab_b}"]))
    )


def test_an_s3_roots_manifests_name_the_data_and_a_spec_reads_each_once(s3, tmp_path):
    """On S3 (the loopback server, reached through the standard AWS variables as the data path
    reaches it) the hash follows the manifests' content; within a spec load each split's manifest
    is read once (an unreachable bucket cost each of a spec's trials a client's retries per split)."""
    import boto3

    from tipslab.orchestrator.config import manifest_of, manifests_read_once
    from tipslab.orchestrator.spec import load_spec

    bucket = boto3.client("s3")

    def put(content: str) -> None:
        for split in ("train", "probe_train", "probe_test"):
            body = f'{{"content_hash": "{content}-{split}", "num_rows": 1}}'
            bucket.put_object(Bucket="tipslab-test", Key=f"d/{split}/manifest.json", Body=body)

    put("abc")
    root = f"{s3}/d"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: s3-hash\nbase: {BASE}\nvariants: {{a: {{}}, b: {{loss.mim_weight: 0}}}}\nseeds: [0, 1]\n")
    overrides = ["data.source=shards", f"data.root={root}"]
    before = load_spec(spec, overrides=overrides)
    assert len({t.config_hash for t in before.trials}) == 4
    put("xyz")
    assert [t.config_hash for t in load_spec(spec, overrides=overrides).trials] != [
        t.config_hash for t in before.trials
    ]
    assert manifest_of(root, "train")["content_hash"] == "xyz-train"
    with manifests_read_once():
        assert manifest_of(root, "train")["content_hash"] == "xyz-train"
        put("new")
        assert manifest_of(root, "train")["content_hash"] == "xyz-train"  # read once in the scope
    assert manifest_of(root, "train")["content_hash"] == "new-train"
    assert manifest_of(f"{s3}/nothing-here", "train") is None and manifest_of("s3://no-such-bucket/d", "x") is None


def alias_bomb(levels: int) -> str:
    """A "billion laughs": 9**levels strings from a few hundred bytes."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel: {{size: tiny}}\nextra: *a{levels - 1}\n"


def test_yaml_documents_are_bounded_before_anything_walks_them(tmp_path):
    import time

    from tipslab.orchestrator.config import MAX_YAML_DEPTH, MAX_YAML_NODES, load_yaml, read_yaml

    bomb = write(tmp_path, alias_bomb(9), "bomb.yaml")  # 9**9 = 387M strings once expanded
    assert len(bomb.read_text()) < 1000
    start = time.process_time()
    with pytest.raises(ConfigError, match=rf"^{bomb}: more than {MAX_YAML_NODES} values once its aliases are expanded"):
        read_yaml(bomb)
    assert time.process_time() - start < 2  # refused from the node graph, never expanded
    assert read_yaml(write(tmp_path, alias_bomb(4), "small.yaml"))["extra"][0][0][0] == ["lol"] * 9  # 9**4: fine
    with pytest.raises(ConfigError, match=r"self.yaml: nested deeper than 64 levels \(or an alias that contains"):
        read_yaml(write(tmp_path, "model: &m {size: *m}\n", "self.yaml"))
    deep = "[" * (MAX_YAML_DEPTH + 2) + "]" * (MAX_YAML_DEPTH + 2)
    with pytest.raises(ConfigError, match="nested deeper than 64 levels"):
        load_yaml(deep, "x")
    with pytest.raises(ConfigError, match="^x: nested too deeply$"):  # past Python's own recursion limit
        load_yaml("[" * 20000 + "]" * 20000, "x")
    with pytest.raises(ConfigError, match=r"big.yaml: \d+ characters, more than the 1048576"):
        read_yaml(write(tmp_path, "#" * (1 << 21), "big.yaml"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.probes=[a,", r"^command line: eval\.probes: not valid YAML at line 1, column 4: .*"),
        ("model.size={", r"^command line: model\.size: not valid YAML"),
        ("train.lr=&a [*a]", r"^command line: train\.lr: nested deeper than 64 levels"),
        ("train.lr=!!python/object/apply:os.system [echo]", r"^command line: train\.lr: not valid YAML"),
        ("train.run_name=${nope}", r"exp\.yaml: train\.run_name: Interpolation key 'nope' not found"),
        ("train.stages=[{name: a, steps: 1000000000000}]", r"train\.stages\[0\] \(a\): steps: .* out of range"),
    ],
)
def test_malformed_overrides_are_one_line_naming_the_key(override, message, tmp_path, home):
    path = write(tmp_path, BASE.read_text())
    with pytest.raises(ConfigError, match=message) as err:
        load_experiment(path, [override])
    assert "\n" not in str(err.value)


def test_missing_local_data_is_found_before_ray_starts(tmp_path):
    from tipslab.orchestrator.config import missing_data

    def config(source, root, datasets=None, dataset="scenes"):
        return {
            "data": {"source": source, "root": str(root), "train_split": "train"},
            "eval": {
                "dataset": dataset,
                "probe_train_split": "pt",
                "probe_test_split": "pe",
                "datasets": datasets or {},
            },
        }

    (tmp_path / "shards" / "train").mkdir(parents=True)
    (tmp_path / "shards" / "train" / "manifest.json").write_text("{}")
    assert missing_data([config("scenes", tmp_path / "absent")], "s") == []  # scenes are made on demand
    assert missing_data([config("shards", "s3://bucket/x")], "s") == []  # read by the workers
    assert missing_data([config("shards", tmp_path / "shards", dataset="")], "s") == []
    assert missing_data([config("shards", tmp_path / "absent")] * 2, "s") == [
        f"s: data.root: {tmp_path / 'absent'}: no such folder (data.source is shards; `tipslab data ingest` makes them)"
    ]
    assert [m.split(" (")[0] for m in missing_data([config("shards", tmp_path / "shards")], "s")] == [
        "s: data.root: no shards of split 'pt'",
        "s: data.root: no shards of split 'pe'",
    ]
    datasets = {"nyuv2": str(tmp_path / "nyu"), "coco": "s3://b/coco"}
    assert missing_data([config("scenes", "", datasets)], "s") == [
        f"s: eval.datasets.nyuv2: {tmp_path / 'nyu'}: no such file or folder"
    ]


def shard_splits(root, lacking: dict | None = None) -> None:
    """Train and probe splits of a few rows under `root`; lacking: split -> columns to leave out."""
    from tipslab.jobs.data.shards.format import write_shards

    row = {"image": jpeg(32, 32), "width": 32, "height": 32, "web_caption": "a red cube", "synthetic_caption": None}
    for split in ("train", "probe_train", "probe_test"):
        write_shards([{**row, "key": f"k{i}"} for i in range(4)], str(root / split), source="test", rows_per_shard=2)
        if (lacking or {}).get(split):
            shards_without(root / split, *lacking[split])


def test_a_split_without_a_column_its_reader_needs_is_found_before_ray_starts(tmp_path):
    from tipslab.orchestrator.config import missing_data

    def config(tag_vocab="", dataset="scenes"):
        data = {"source": "shards", "root": str(tmp_path), "train_split": "train", "tag_vocab": tag_vocab}
        ev = {"dataset": dataset, "probe_train_split": "probe_train", "probe_test_split": "probe_test"}
        return {"data": data, "eval": {**ev, "datasets": {}}}

    shard_splits(tmp_path)
    assert missing_data([config(), config("vocab.txt")], "s") == []  # NULL synthetic captions are fine
    first = tmp_path / "train" / "shard-00000.parquet"
    shards_without(tmp_path / "train", "tags")  # read only with a tag vocabulary
    assert missing_data([config()], "s") == []
    assert missing_data([config("vocab.txt")], "s") == [
        f"s: data.root: split 'train': {first} has no column 'tags' (its columns: key, image, web_caption, "
        "synthetic_caption, width, height); training reads key, image, web_caption, synthetic_caption, tags"
    ]
    shards_without(tmp_path / "train", "web_caption")
    assert missing_data([config()] * 3, "s") == [  # one line for the trials that share the split
        f"s: data.root: split 'train': {first} has no column 'web_caption' (its columns: key, image, "
        "synthetic_caption, width, height); training reads key, image, web_caption, synthetic_caption; "
        "a caption the loss does not use may be a column of NULLs"
    ]
    shards_without(tmp_path / "probe_test", "web_caption", "synthetic_caption")  # the probes need neither
    shards_without(tmp_path / "probe_train", "image")
    assert [m.split(" (")[0] for m in missing_data([config()], "s")] == [
        f"s: data.root: split 'train': {first} has no column 'web_caption'",
        f"s: data.root: split 'probe_train': {tmp_path / 'probe_train' / 'shard-00000.parquet'} has no column 'image'",
    ]
    assert len(missing_data([config(dataset="")], "s")) == 1  # no probe splits read
    (tmp_path / "train" / "shard-00000.parquet").write_bytes(b"PAR1 not parquet PAR1")
    assert missing_data([config(dataset="")], "s")[0].startswith(f"s: data.root: split 'train': shard {first} is not")


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_refuse_shards_without_web_caption_before_ray(command, tmp_path, home, monkeypatch, capsys):
    import sys
    import types

    from tipslab.orchestrator.cli import main

    def ray_would_start(*args, **kwargs):
        raise RuntimeError("reached run_sweep: Ray would start")

    monkeypatch.setitem(sys.modules, "tipslab.orchestrator.sweep", types.SimpleNamespace(run_sweep=ray_would_start))
    root = tmp_path / "shards"
    shard_splits(root, {"train": ["web_caption"]})
    smoke = ["sweep", str(REPO / "ablations" / "smoke.yaml"), "--smoke"]
    target = ["train", str(BASE)] if command == "train" else smoke
    argv = [*target, "data.source=shards", f"data.root={root}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tipslab: error: ") and "data.root: split 'train': " in err
    assert f"{root / 'train' / 'shard-00000.parquet'} has no column 'web_caption'" in err
    shard_splits(root)  # the same command with the column there gets as far as starting Ray
    with pytest.raises(RuntimeError, match="Ray would start"):
        main(argv)
