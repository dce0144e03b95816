"""The captioner stage: ``synthetic_caption`` from an image-to-text model, in a Ray Data actor pool.

TIPS replaces noisy web captions with dense synthetic ones made by an image captioner (PaliGemma in
the TIPS paper). Here any Hugging Face transformers image-to-text model saved in a local folder
(``save_pretrained``: its model, image processor and tokenizer) fills the column: it is loaded with
``local_files_only`` and ``HF_HUB_OFFLINE``, so nothing is ever downloaded. Each actor holds one
copy of the model, with one GPU when the cluster has GPUs. Captioners that caption plain pixels
(BLIP, GIT, a VisionEncoderDecoder) need no prompt; prompt-driven ones (PaliGemma, the paper's:
"caption en") take `prompt`, given with the images to the model's own processor, and only the
generated continuation becomes the caption. Rows whose image cannot be decoded keep
their old caption and are counted as bad; the stage stops past the bad-row fraction.
"""

from __future__ import annotations

import os

import pyarrow as pa
import ray.data

from tipslab.jobs.data.shards.format import read_manifest, shard_files
from tipslab.jobs.data.shards.rewrite import rewrite_shards
from tipslab.jobs.data.shards.rows import BadRow, BadRows, decode_image
from tipslab.jobs.storage import aws_env
from tipslab.models.errors import DataError

_ERROR_COLUMN = "_caption_error"


class Captioner:
    """A Ray Data callable class: one model per actor, a pyarrow batch in, the same batch out with
    ``synthetic_caption`` replaced and a column naming each row that could not be captioned."""

    def __init__(self, model_path: str, max_new_tokens: int, max_pixels: int, prompt: str | None = None):
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.prompt = prompt
        if prompt:  # the model's processor puts the prompt (and its image tokens) beside the pixels
            self.processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
            self.tokenizer = self.processor.tokenizer
        else:
            self.processor = AutoImageProcessor.from_pretrained(model_path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, local_files_only=True)
        self.model.to(self.device).eval()
        self.max_new_tokens, self.max_pixels = max_new_tokens, max_pixels

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys = batch.column("key").to_pylist()
        captions = batch.column("synthetic_caption").to_pylist()
        errors: list[str | None] = [None] * len(keys)
        images, index = [], []
        for i, (key, data) in enumerate(zip(keys, batch.column("image").to_pylist())):
            try:
                images.append(decode_image(data, key, self.max_pixels))
                index.append(i)
            except BadRow as err:
                errors[i] = f"{err.reason}\t{err.detail}"
        if images:
            for i, text in zip(index, self.generate(images)):
                if text.strip():
                    captions[i] = text.strip()
                else:
                    errors[i] = "empty_caption\tthe model generated no text"
        column = batch.schema.get_field_index("synthetic_caption")
        batch = batch.set_column(column, "synthetic_caption", pa.array(captions, pa.string()))
        return batch.append_column(_ERROR_COLUMN, pa.array(errors, pa.string()))

    def generate(self, images: list) -> list[str]:
        with self.torch.inference_mode():
            if not self.prompt:
                pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
                ids = self.model.generate(pixel_values=pixels.to(self.device), max_new_tokens=self.max_new_tokens)
                return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            inputs = self.processor(images=images, text=[self.prompt] * len(images), return_tensors="pt")
            inputs.pop("labels", None)
            ids = self.model.generate(**inputs.to(self.device), max_new_tokens=self.max_new_tokens)
            if not self.model.config.is_encoder_decoder:  # a decoder-only model repeats the prompt first
                ids = ids[:, inputs["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            return [t.strip().removeprefix(self.prompt) for t in texts]


def caption_shards(
    shards: str,
    model_path: str,
    *,
    out: str | None = None,
    actors: int = 1,
    batch_size: int = 16,
    max_new_tokens: int = 40,
    max_pixels: int,
    max_bad_fraction: float,
    prompt: str | None = None,
) -> dict:
    """Fill ``synthetic_caption`` of every row; write the new shard set (jobs/data/shards/rewrite.py); summarise.

    Ray must be initialised. Uses one GPU per actor when the cluster has GPUs, else one CPU.
    """
    if not os.path.isdir(model_path):
        raise DataError(f"--model {model_path}: not a folder (a model saved with save_pretrained)")
    gpus = ray.cluster_resources().get("GPU", 0)
    # A dataset copies the DataContext when it is made: keep the rows in order (the new shards
    # keep the old row order), then give the driver its setting back.
    ctx = ray.data.DataContext.get_current()
    preserve = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        ds = _captioned(shards, model_path, actors, batch_size, (max_new_tokens, max_pixels, prompt), gpus)
    finally:
        ctx.execution_options.preserve_order = preserve
    bad = BadRows()
    captioned = 0

    def rows():
        nonlocal captioned
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=batch_size):
            for row in batch.to_pylist():
                error = row.pop(_ERROR_COLUMN)
                bad.seen()
                if error:
                    reason, _, detail = error.partition("\t")
                    bad.add(BadRow(row["key"], reason, detail))
                    bad.check(max_bad_fraction)
                else:
                    captioned += 1
                yield row
        bad.check(max_bad_fraction, final=True)

    source = f"{read_manifest(shards)['source']}+caption:{os.path.basename(model_path.rstrip('/'))}"
    manifest = rewrite_shards(shards, rows(), source=source, out=out)
    return {
        "shards": out or shards,
        "rows": manifest["num_rows"],
        "captioned": captioned,
        "bad_rows": bad.to_dict(),
        "gpus_per_actor": 1 if gpus else 0,
        "content_hash": manifest["content_hash"],
    }


def _captioned(shards, model_path, actors, batch_size, settings: tuple, gpus) -> ray.data.Dataset:
    """The shards read and captioned by a pool of `Captioner` actors (AWS variables passed on)."""
    ds = ray.data.read_parquet(shard_files(shards), ray_remote_args={"runtime_env": {"env_vars": aws_env()}})
    ds = ds.map_batches(
        Captioner,
        fn_constructor_args=(os.path.abspath(model_path), *settings),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(actors, 1)),
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
        runtime_env={"env_vars": {**aws_env(), "HF_HUB_OFFLINE": "1"}},
    )
    return ds
