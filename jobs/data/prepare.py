"""Make sure an experiment's data exists before its jobs start."""
import os

from .pipeline import split_dir
from .scenes import generate_scenes
from .shards import MANIFEST_NAME, ShardError, read_manifest


def ensure_scenes(exp: dict) -> list[str]:
    """For `data.source: scenes`, render every missing split (deterministic by seed); returns the
    splits it made. Other sources must already be sharded."""
    data, ev = exp["data"], exp["eval"]
    if data["source"] != "scenes":
        return []
    wanted = {data["train_split"]: data["scenes_train"], ev["probe_train_split"]: data["scenes_probe"],
              ev["probe_test_split"]: data["scenes_probe"]}
    made = []
    for split, n in wanted.items():
        out = split_dir(data["root"], split)
        size, seed = exp["model"]["image_size"], data["scene_seed"]
        if not _has_scenes(out, n, f"scenes:{split}:seed={seed}:size={size}"):
            generate_scenes(out, n, split=split, seed=seed, size=size)
            made.append(split)
    return made


def _has_scenes(out: str, n: int, source: str) -> bool:
    if not os.path.exists(os.path.join(out, MANIFEST_NAME)):
        return False
    try:
        manifest = read_manifest(out)
    except ShardError:
        return False
    return manifest["source"] == source and manifest["num_rows"] == n
