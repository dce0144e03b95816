"""Make sure an experiment's data exists before its jobs start."""

from collections.abc import Callable

from tipslab.jobs import storage
from tipslab.jobs.config import experiment
from tipslab.jobs.data.pipeline.streaming import split_dir
from tipslab.jobs.data.scenes.generate import generate_scenes, scenes_source
from tipslab.jobs.data.shards.format import MANIFEST_NAME, SCHEMA_VERSION, ShardError, read_manifest


def ensure_scenes(exp, on_progress: Callable[[str, int, int], None] | None = None) -> list[str]:
    """For `data.source: scenes`, render every missing split (deterministic by seed, in parallel
    when Ray is initialised) under `data.root`, a local folder or s3:// prefix; returns the splits
    it made, telling `on_progress(split, done, total)` of the scenes rendered as it goes. Other
    sources must already be sharded."""
    exp = experiment(exp)
    data, ev = exp.data, exp.eval
    if data.source != "scenes":
        return []
    wanted = {
        data.train_split: data.scenes_train,
        ev.probe_train_split: data.scenes_probe,
        ev.probe_test_split: data.scenes_probe,
    }
    made = []
    for split, n in wanted.items():
        out = split_dir(data.root, split)
        size, seed = exp.model.image_size, data.scene_seed
        if not _has_scenes(out, n, scenes_source(split, seed, size)):
            shown = (lambda done, total, split=split: on_progress(split, done, total)) if on_progress else None
            generate_scenes(out, n, split=split, seed=seed, size=size, on_progress=shown)
            made.append(split)
    return made


def _has_scenes(out: str, n: int, source: str) -> bool:
    """Shards made by this code for the same settings (an older schema is made again)."""
    if not storage.exists(storage.join(out, MANIFEST_NAME)):
        return False
    try:
        manifest = read_manifest(out)
    except ShardError:
        return False
    return manifest["source"] == source and manifest["num_rows"] == n and manifest["schema_version"] == SCHEMA_VERSION
