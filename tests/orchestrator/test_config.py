import pytest
from conftest import REPO
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
