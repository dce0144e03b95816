"""The experiment schema, composed of each layer's structured configs, and how it is loaded.

Sources merge in order base <- spec overrides <- variant <- command-line key=value. Each merge is
checked against the schema on its own, so an unknown key or a wrong type is reported with its
dotted path and the source (file, or "command line") it came from, before Ray starts.
"""

import hashlib
import json
import os
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf._utils import _DEFAULT_MARKER_
from omegaconf.errors import OmegaConfBaseException
from omegaconf.resolvers import oc

from tipslab.jobs.config import ExperimentConfig, read_tag_vocab
from tipslab.jobs.redact import remember

from .errors import ConfigError
from .runtime import home


def _env(key, default=_DEFAULT_MARKER_):
    """`${oc.env:NAME}` / `${oc.env:NAME,default}` as OmegaConf resolves it, and what it read from the
    environment is remembered as a secret (jobs/redact.py): whatever the variable's name, its value
    is masked in everything logged, printed or written."""
    value = oc.env(key, default)
    if key in os.environ:
        remember(value)
    return value


OmegaConf.register_resolver("oc.env", _env, replace=True, annotation_validation="off")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def nest(dotted: dict) -> dict:
    """{"a.b": 1, "c": {"d": 2}} -> {"a": {"b": 1}, "c": {"d": 2}}."""
    out: dict = {}
    for key, value in (dotted or {}).items():
        *parents, last = str(key).split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if isinstance(value, dict):
            node.setdefault(last, {}).update(nest(value))
        else:
            node[last] = value
    return out


def merge(cfg: DictConfig, data: dict, source: str, prefix: str = "") -> DictConfig:
    """Merge `data` into the typed `cfg`; errors name `source` and the key's full dotted path."""
    try:
        return OmegaConf.merge(cfg, nest(data))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"{source}: {prefix}{key}: {msg}") from None


def parse_overrides(items: list[str]) -> dict:
    """Command-line `key=value` items -> {dotted key: typed value} (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"command line: {item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out


def schema() -> DictConfig:
    return OmegaConf.structured(ExperimentConfig)


def check(cfg: DictConfig, source: str) -> None:
    """Checks of values (not just types) that would otherwise fail late, inside Ray: each section's
    own (models/config.py, jobs/config.py: made once the config is typed) and those that read files.
    The tokenizer is checked when a run starts (orchestrator/launch.py), so that a spec can be planned
    before its data is prepared."""

    def bad(key: str, why: str):
        raise ConfigError(f"{source}: {key}: {why}")

    try:
        OmegaConf.to_object(cfg)  # ExperimentConfig and its sections check their values as they are made
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    if cfg.data.tag_vocab and not Path(cfg.data.tag_vocab).is_file():
        bad("data.tag_vocab", f"no tag vocabulary at {cfg.data.tag_vocab} (one tag per line)")
    if cfg.data.tag_vocab:
        cfg.model.num_tags = len(read_tag_vocab(cfg.data.tag_vocab))  # derived, never set by hand
    if cfg.loss.tag_weight > 0 and cfg.model.num_tags < 1:
        bad("data.tag_vocab", "the tagging loss (loss.tag_weight > 0) needs a tag vocabulary file")


STAGE_FIXED = ("train.stages", "train.steps", "train.num_workers", "train.strategy")  # one per run, not per stage


def check_stages(cfg: DictConfig, label: str) -> None:
    """Each stage's overrides must make a valid config on their own; train.steps becomes their sum."""
    names = [stage.name for stage in cfg.train.stages]
    for i, stage in enumerate(cfg.train.stages):
        where = f"{label}: train.stages[{i}]"
        if not stage.name or names.count(stage.name) > 1:
            raise ConfigError(f"{where}: name: every stage needs a name of its own (got {stage.name!r})")
        if stage.steps < 1:
            raise ConfigError(f"{where} ({stage.name}): steps: must be at least 1")
        for key in stage.overrides:
            if key.startswith(STAGE_FIXED):
                raise ConfigError(f"{where} ({stage.name}): overrides: {key} cannot change between stages")
        check(merge(cfg, OmegaConf.to_container(stage.overrides), where, "overrides: "), f"{where} ({stage.name})")
    if names:
        cfg.train.steps = sum(stage.steps for stage in cfg.train.stages)


def compose(sources: list[tuple[dict, str]], label: str) -> DictConfig:
    """Merge (data, source name) pairs, in order, onto the schema; check the result as `label`."""
    cfg = schema()
    for data, source in sources:
        cfg = merge(cfg, data, source)
    check(cfg, label)
    check_stages(cfg, label)
    # Workers run in other folders: every path they get is absolute.
    if not cfg.data.root.startswith("s3://"):  # an s3:// URI is absolute already
        cfg.data.root = str(Path(cfg.data.root).resolve()) if cfg.data.root else str(home() / "data" / "scenes")
    if cfg.model.tokenizer != "hash" and "://" not in cfg.model.tokenizer:
        cfg.model.tokenizer = str(Path(cfg.model.tokenizer).resolve())
    if cfg.data.tag_vocab:
        cfg.data.tag_vocab = str(Path(cfg.data.tag_vocab).resolve())
    return cfg


def load_experiment(path: str | Path, overrides: list[str] = ()) -> DictConfig:
    """A base experiment file plus command-line overrides."""
    return compose([(read_yaml(path), str(path)), (parse_overrides(list(overrides)), "command line")], str(path))


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def config_hash(config: dict) -> str:
    """Identity of a resolved config: equal hashes mean the same training run.

    Paths are replaced by what they hold (the shards' manifest content hash, a file's sha256), so
    the same run resumed from another working directory or another copy of the data still matches.
    """
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:16]


def identity(config: dict) -> dict:
    """The config with every path swapped for the content it names."""
    out = json.loads(json.dumps(config))
    if "data" not in out:  # not an experiment config: nothing to swap
        return out
    data = out["data"]
    # Procedural scenes are fully determined by the data.* and model.image_size keys already here.
    data["root"] = "scenes" if data["source"] == "scenes" else data_fingerprint(config)
    for section, key in (("model", "tokenizer"), ("data", "tag_vocab")):
        digest = file_sha256(out[section][key])
        if digest:
            out[section][key] = "sha256:" + digest
    return out


def file_sha256(path: str) -> str | None:
    """The sha256 of the file a config key names (model.tokenizer, data.tag_vocab); None for 'hash',
    an empty value or a file that is not there."""
    if not path or path == "hash" or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def data_fingerprint(config: dict) -> dict:
    """{split: manifest content hash} of the splits a run reads; a split without a readable
    manifest keeps its path (it fails later, with its own message)."""
    data, ev = config["data"], config["eval"]
    return {
        split: (manifest_of(data["root"], split) or {}).get("content_hash", f"{data['root']}/{split}")
        for split in (data["train_split"], ev["probe_train_split"], ev["probe_test_split"])
    }


def manifest_of(root: str, split: str) -> dict | None:
    """The shard manifest of one split under a local or s3:// root, or None when there is none."""
    uri = f"{root.rstrip('/')}/{split}/manifest.json"
    if "://" not in uri and not Path(uri).is_file():  # data not prepared yet: no need to load pyarrow
        return None
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else Path(uri).absolute().as_uri())
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
