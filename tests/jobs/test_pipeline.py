"""The training input pipeline (jobs/data/pipeline.py): how a rank's files become blocks and views."""
import numpy as np
import pyarrow.parquet as pq
from conftest import REPO, tiny_overrides

from tipslab.jobs.data.pipeline import (BATCHES_PER_BLOCK, key_ids, plan_epoch, rank_dataset, read_blocks,
                                        split_dir, train_shards)
from tipslab.jobs.data.scenes import generate_scenes
from tipslab.orchestrator.config import load_experiment, to_dict

BASE = REPO / "ablations" / "base" / "tips_tiny.yaml"


def test_read_blocks_give_every_views_task_work():
    assert BATCHES_PER_BLOCK == 4
    assert read_blocks(rows=512, files=2, batch_size=32, tasks=2) == 4  # 16 batches, 4 per block
    assert read_blocks(rows=4096, files=16, batch_size=32, tasks=2) == 32
    assert read_blocks(rows=64, files=1, batch_size=32, tasks=2) == 2  # a block per task...
    assert read_blocks(rows=20, files=1, batch_size=32, tasks=4) == 1  # ...while each has a batch
    assert read_blocks(rows=96, files=12, batch_size=8, tasks=1) == 12  # never fewer than the files


def test_a_ranks_file_is_read_in_blocks_for_parallel_views_in_file_order(ray_session, tmp_path):
    # One file of 96 rows, batches of 8, 2 CPUs: Ray Data's default reader would make one block and
    # one views task of it; the read splits it into 96 / (8 * 4) = 3 blocks, in order.
    rows, batch = 96, 8
    exp = to_dict(load_experiment(BASE, tiny_overrides(**{"data.root": str(tmp_path), "data.batch_size": batch,
                                                          "model.image_size": 56, "data.local_crop_size": 28})))
    path = split_dir(exp["data"]["root"], exp["data"]["train_split"])
    generate_scenes(path, rows, size=56, rows_per_shard=rows, parallel=False)
    shards = train_shards(exp)
    assert len(shards) == 1
    ds = rank_dataset(exp, plan_epoch(shards, seed=0, epoch=0, world_size=1), rank=0, cpus=2).materialize()
    assert ds.num_blocks() == 3  # a views task per block: both CPUs busy
    out = ds.take_batch(rows, batch_format="numpy")
    # preserve_order: the rows come in file order (the resumable position is a row count)
    keys = pq.read_table(shards[0].file, columns=["key"]).column("key").to_pylist()
    np.testing.assert_array_equal(out["key_id"], key_ids(keys))
    assert out["rows_done"].sum() == rows and out["global_crop"].dtype == np.uint8
