"""The experiment schema, composed of each layer's structured configs, and how it is loaded.

Sources merge in order base <- spec overrides <- variant <- command-line key=value. Each merge is
checked against the schema on its own, so an unknown key or a wrong type is reported with its
dotted path and the source (file, or "command line") it came from, before Ray starts.
"""

import copy
import hashlib
import json
import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf._utils import _DEFAULT_MARKER_
from omegaconf.errors import OmegaConfBaseException
from omegaconf.resolvers import oc

from tipslab.jobs.config import MAX_STEPS, ExperimentConfig, read_tag_vocab
from tipslab.jobs.redact import remember

from .errors import ConfigError, UserError
from .runtime import home

# Bounds on a YAML document, checked on its node graph before anything is built from it: aliases
# let 1 KB expand to billions of nodes (the "billion laughs"), or refer to themselves, and every
# consumer of the loaded document (OmegaConf, nest, the config hash) walks it expanded.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # expanded: an alias counts its target's nodes again
MAX_YAML_DEPTH = 64


def expanded_nodes(node, where: str, depth: int = 0, memo: dict | None = None) -> int:
    """How many nodes `node` stands for with its aliases expanded; ConfigError past the bounds."""
    memo = {} if memo is None else memo
    if id(node) in memo:
        return memo[id(node)]
    if depth > MAX_YAML_DEPTH:
        raise ConfigError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels (or an alias that contains itself)")
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    total = 1 + sum(expanded_nodes(child, where, depth + 1, memo) for child in children)
    if total > MAX_YAML_NODES:
        raise ConfigError(f"{where}: more than {MAX_YAML_NODES} values once its aliases are expanded")
    memo[id(node)] = total
    return total


def load_yaml(text: str, where: str):
    """One YAML document as plain Python values, within the bounds above; errors in one line."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters, more than the {MAX_YAML_BYTES} a config or spec may have")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_nodes(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


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
        data = load_yaml(path.read_text(), str(path))
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{path}: cannot read it as text ({err})") from None
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


def merge(cfg: DictConfig, data: dict, source: str, prefix: str = "", in_place: bool = False) -> DictConfig:
    """Merge `data` into the typed `cfg` (a copy of it, unless `in_place`: a copy of the whole
    config is most of a merge's time); errors name `source` and the key's full dotted path."""
    try:
        if in_place:
            cfg.merge_with(nest(data))
            return cfg
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
        out[key.strip()] = load_yaml(value, f"command line: {key.strip()}") if value else ""
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
    except OmegaConfBaseException as err:  # an interpolation that does not resolve (${nope}, ${oc.env:UNSET})
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{source}: {key}: {str(getattr(err, 'msg', err)).splitlines()[0]}") from None
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
        if not 1 <= stage.steps <= MAX_STEPS:
            raise ConfigError(
                f"{where} ({stage.name}): steps: {stage.steps} is out of range: must be in [1, {MAX_STEPS}]"
            )
        for key in stage.overrides:
            if key.startswith(STAGE_FIXED):
                raise ConfigError(f"{where} ({stage.name}): overrides: {key} cannot change between stages")
        check(merge(cfg, OmegaConf.to_container(stage.overrides), where, "overrides: "), f"{where} ({stage.name})")
    if names:
        cfg.train.steps = sum(stage.steps for stage in cfg.train.stages)
        if cfg.train.steps > MAX_STEPS:
            raise ConfigError(f"{label}: train.stages: {cfg.train.steps} steps in all, more than {MAX_STEPS}")


def compose(sources: list[tuple[dict, str]], label: str, start: DictConfig | None = None) -> DictConfig:
    """Merge (data, source name) pairs, in order, onto the schema (or `start`, sources merged onto
    it already, left unchanged); check the result as `label`."""
    cfg = schema() if start is None else copy.deepcopy(start)
    for data, source in sources:
        cfg = merge(cfg, data, source, in_place=True)
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


def missing_data(configs: list[dict], where: str) -> list[str]:
    """What is missing for trials that read shards from a local `data.root` or evaluate local
    `eval.datasets` (one line each, naming the key): a folder, a split's manifest, or a column that
    a split's reader needs (jobs/data/pipeline/columns.py). Checked before Ray starts; s3://
    locations are read by the workers, with the workers' credentials, and are not checked here."""
    out, checked = {}, {}
    for config in configs:
        data, ev = config["data"], config["eval"]
        for name, folder in ev["datasets"].items():
            if not folder.startswith("s3://") and not Path(folder).exists():
                out[folder] = f"{where}: eval.datasets.{name}: {folder}: no such file or folder"
        root = data["root"]
        if data["source"] != "shards" or root.startswith("s3://"):
            continue
        if not Path(root).is_dir():
            out[root] = (
                f"{where}: data.root: {root}: no such folder (data.source is shards; `tipslab data ingest` makes them)"
            )
            continue
        splits = [data["train_split"], *((ev["probe_train_split"], ev["probe_test_split"]) if ev["dataset"] else ())]
        for split in splits:
            manifest = Path(root) / split / "manifest.json"
            if not manifest.is_file():
                out[str(manifest)] = f"{where}: data.root: no shards of split {split!r} ({manifest} is missing)"
                continue
            key = (root, split, split == data["train_split"] and bool(data.get("tag_vocab")))
            if key not in checked:  # trials share their splits: each is read once
                checked[key] = unfit_split(data, split)
            if checked[key]:
                out[f"{manifest}:{checked[key]}"] = f"{where}: data.root: split {split!r}: {checked[key]}"
    return list(out.values())


def unfit_split(data: dict, split: str) -> str | None:
    """Why a local split lacks a column that its reader (training, or the probes) needs, from the
    schema of the first shard its manifest lists (this loads pyarrow, which only shards that exist
    need). A manifest that lists no shard file that exists is left to the run, which names it."""
    manifest = manifest_of(data["root"], split)
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    first = shards[0].get("file") if isinstance(shards, list) and shards and isinstance(shards[0], dict) else None
    path = Path(data["root"]) / split / first if isinstance(first, str) else None
    if path is None or not path.is_file():
        return None
    from tipslab.jobs.data.pipeline.columns import PROBE_COLUMNS, train_columns, unfit

    if split == data["train_split"]:
        needed, reads = train_columns(data.get("tag_vocab")), "training reads"
    else:
        needed, reads = PROBE_COLUMNS, "the probes read"
    try:
        return unfit([str(path)], needed, reads)
    except UserError as err:  # not a Parquet file
        return str(err)


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


# The manifests read in the current `manifests_read_once()` scope, by URI (None outside one).
_MANIFESTS: ContextVar[dict | None] = ContextVar("tipslab_manifests", default=None)


@contextmanager
def manifests_read_once():
    """Within this scope each split's manifest is read once: a spec's trials share their splits, and
    a remote read can take seconds (an unreachable bucket: the client's retries)."""
    token = _MANIFESTS.set({})
    try:
        yield
    finally:
        _MANIFESTS.reset(token)


def manifest_of(root: str, split: str) -> dict | None:
    """The shard manifest of one split under a local or s3:// root, or None when there is none."""
    uri = f"{root.rstrip('/')}/{split}/manifest.json"
    read = _MANIFESTS.get()
    if read is None:
        return read_manifest_file(uri)
    if uri not in read:
        read[uri] = read_manifest_file(uri)
    return read[uri]


def read_manifest_file(uri: str) -> dict | None:
    if "://" not in uri:  # a local file: read without pyarrow (a config check must stay light)
        try:
            return json.loads(Path(uri).read_text())
        except (OSError, ValueError):
            return None
    from tipslab.jobs import storage  # S3 as the data path reaches it: its endpoint and region

    try:
        return json.loads(storage.read_bytes(uri))
    except (OSError, ValueError, UserError):
        return None


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
