"""Frozen features by Ray Data batch inference: an actor pool whose actors load the checkpoint
once, one GPU each when the cluster has GPUs, CPU otherwise.

Called from inside a Ray task that already holds CPUs (a sweep trial's evaluation), the work is the
caller's: with GPUs the actors ask for no CPUs of their own (the caller's reservation pays for them;
asking again would wait forever on a machine whose CPUs the caller holds). Without GPUs the pool would
be one actor on the caller's CPUs, so the caller computes the features itself, on the same threads,
batch by batch: the same numbers without an actor's start-up (a process, its imports of Ray Data, torch
and the model, the checkpoint loaded a second time), which on a small probe set is most of the time.
"""

import contextlib
import io
import tempfile

import numpy as np
import ray
import torch
import torch.nn.functional as F

from tipslab.jobs import storage
from tipslab.models.checkpoint import load_student
from tipslab.models.errors import DataError


@contextlib.contextmanager
def local_checkpoint(uri: str):
    """A local folder holding the checkpoint at `uri` (a folder, or s3://, copied to a temp folder)."""
    if not storage.is_s3(uri):
        yield uri
        return
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    with tempfile.TemporaryDirectory(prefix="tipslab-checkpoint-") as local:
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield local


def load_pixels(image, size: int, key: str) -> torch.Tensor:
    """[3, size, size] in [0, 1] (the TIPS towers take unnormalised pixels) from bytes or a path."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image) as img:
            x = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255.0
    except (OSError, ValueError) as err:
        raise DataError(f"image {key!r}: cannot decode ({err})") from None
    if x.shape[1:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x


class Towers:
    """One actor: the student (on its GPU if it has one) and the tokenizer, loaded once.

    A row is an image (`image`: bytes or a path) or a text (`text`, with `is_text`). Images and texts go through
    one pass, so an evaluation starts one pool of actors, not two; each output column is zero on the
    rows of the other kind."""

    def __init__(self, checkpoint: str, threads: int, image_size: int, patches: bool):
        torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        with local_checkpoint(checkpoint) as folder:
            student, self.tokenizer, _ = load_student(folder)
        self.student = student.to(self.device)
        self.size, self.patches = image_size, patches
        self.grid = (image_size // student.vision.patch_size) ** 2 if patches else 0

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        n = len(batch["index"])
        is_text = batch["is_text"].astype(bool)
        out = {"index": batch["index"]}
        images = np.flatnonzero(~is_text)
        vision = {}
        if len(images):
            pixels = torch.stack([load_pixels(batch["image"][i], self.size, batch["key"][i]) for i in images])
            vision = self.student.vision(pixels.to(self.device))
        names = ("cls_web", "cls_synthetic") + (("patch_tokens",) if self.patches else ())
        for name in names:
            shape = (n, self.grid) if name == "patch_tokens" else (n,)
            out[name] = np.zeros(shape + (self.width,), np.float32)
            if len(images):
                out[name][images] = vision[name].float().cpu().numpy()
        out["text"] = np.zeros((n, self.width), np.float32)
        texts = np.flatnonzero(is_text)
        if len(texts):
            tokens = torch.from_numpy(self.tokenizer.encode([str(batch["text"][i]) for i in texts]))
            out["text"][texts] = self.student.encode_text(tokens.to(self.device)).float().cpu().numpy()
        return out

    @property
    def width(self) -> int:
        return self.student.vision.width


def actor_resources() -> tuple[dict | None, int, int]:
    """(Ray resources per actor, pool size, torch threads per actor) for this process on this cluster."""
    ctx = ray.get_runtime_context()
    held = ctx.get_assigned_resources().get("CPU", 0) if ctx.worker.mode == ray.WORKER_MODE else 0
    cluster = ray.cluster_resources()
    return pool_for(held, int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1)))


def pool_for(held: float, gpus: int, cpus: int) -> tuple[dict | None, int, int]:
    """The pool for a caller holding `held` CPUs (0: not a Ray task) on a cluster of `gpus` GPUs and
    `cpus` CPUs; resources None: no pool, the caller computes on its own threads."""
    if gpus:
        return {"num_gpus": 1, "num_cpus": 0 if held else 1}, gpus, 1
    if held:
        return None, 0, max(1, int(held))
    cpus = max(1, min(4, cpus))
    return {"num_cpus": cpus}, 1, cpus


def feature_rows(keys: list[str], images: list, texts: list[str]) -> list[dict]:
    """The rows `Towers` takes: the images, then the texts, each with its index in that order."""
    # Arrow nulls do not come back as None in numpy batches: an explicit flag tells the kinds apart.
    rows = [{"key": k, "image": im, "text": "", "is_text": False} for k, im in zip(keys, images)]
    rows += [{"key": f"text {i}", "image": None, "text": t, "is_text": True} for i, t in enumerate(texts)]
    return [{"index": i, **row} for i, row in enumerate(rows)]


def in_process(rows: list[dict], batch_size: int, towers: "Towers") -> list[dict]:
    """The actor's batches, computed here: rows in order, `batch_size` at a time, as numpy columns."""
    parts = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: np.array([r[k] for r in chunk], dtype=object) for k in ("key", "image", "text")}
        batch["index"] = np.array([r["index"] for r in chunk], np.int64)
        batch["is_text"] = np.array([r["is_text"] for r in chunk], bool)
        parts.append(towers(batch))
    return parts


def features(
    checkpoint: str, keys: list[str], images: list, texts: list[str], image_size: int, patches: bool, batch_size: int
) -> dict[str, np.ndarray]:
    """cls_web, cls_synthetic (and patch_tokens) of the images, `text` of the texts, in input order."""
    resources, pool, threads = actor_resources()
    rows = feature_rows(keys, images, texts)
    towers = {"checkpoint": checkpoint, "threads": threads, "image_size": image_size, "patches": patches}
    if resources is None:
        parts = in_process(rows, batch_size, Towers(**towers))
    else:
        out = ray.data.from_items(rows).map_batches(
            Towers,
            fn_constructor_kwargs=towers,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool),
            runtime_env={"env_vars": storage.aws_env()},
            **resources,
        )
        parts = list(out.iter_batches(batch_size=None, batch_format="numpy"))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols.pop("index"))
    cols = {k: v[order] for k, v in cols.items()}
    n = len(keys)
    return {**{k: v[:n] for k, v in cols.items() if k != "text"}, "text": cols["text"][n:]}
