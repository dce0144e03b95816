"""The Ray Data input pipeline: streaming Parquet shards -> TIPS views on CPU tasks."""
import os

import ray.data

from tipslab.models.tokenizer import build_tokenizer

from .shards import shard_files
from .views import TIPSViews

TRAIN_COLUMNS = ["key", "image", "web_caption", "synthetic_caption"]


def read_tag_vocab(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def split_dir(root: str, split: str) -> str:
    return os.path.join(root, split)


def views_for(exp: dict) -> TIPSViews:
    model, data, loss = exp["model"], exp["data"], exp["loss"]
    return TIPSViews(
        image_size=model["image_size"], patch_size=model["patch_size"],
        local_crops=data["local_crops"], local_crop_size=data["local_crop_size"],
        global_crop_scale=data["global_crop_scale"], local_crop_scale=data["local_crop_scale"],
        mask_ratio=loss["mask_ratio"], tokenizer=build_tokenizer(model),
        tag_vocab=read_tag_vocab(data["tag_vocab"]) if data["tag_vocab"] else (),
    )


def train_dataset(exp: dict) -> ray.data.Dataset:
    """The training split as a streaming Ray Data dataset of views, block order shuffled per epoch."""
    data = exp["data"]
    files = shard_files(split_dir(data["root"], data["train_split"]))
    views = views_for(exp)
    columns = TRAIN_COLUMNS + (["tags"] if data["tag_vocab"] else [])
    ds = ray.data.read_parquet(files, columns=columns).randomize_block_order()
    return ds.map_batches(views, batch_size=data["batch_size"], batch_format="numpy", num_cpus=1)


def data_execution_options(exp: dict) -> ray.data.ExecutionOptions:
    """Ray Data's explicit CPU budget for this job, so that it never starves the trainers."""
    return ray.data.ExecutionOptions(resource_limits=ray.data.ExecutionResources(cpu=exp["data"]["cpus"]))
