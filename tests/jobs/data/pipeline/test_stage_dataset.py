"""One dataset for a stage's epochs (jobs/data/pipeline/streaming.py `stage_dataset`): the views built
once per actor, each epoch's own augmentations, and a position that resumes across an epoch boundary."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_streaming import one_shard, tiny_exp

from tipslab.jobs.data.pipeline.batches import EpochBatches
from tipslab.jobs.data.pipeline.streaming import (
    PositionedViews,
    key_ids,
    plan_epoch,
    plan_epochs,
    split_dir,
    stage_dataset,
    train_shards,
)
from tipslab.jobs.data.scenes.generate import generate_scenes

VIEWS = ("global_crop", "local_crops", "masks")
TASKS = 10**6  # data.views_actor_rows above any stage here: the views in Ray tasks


def counted_views(log: str):
    """PositionedViews that writes its process id to `log` each time it is built (a views actor)."""

    class CountedViews(PositionedViews):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")

    return CountedViews


def test_a_stage_of_three_epochs_builds_its_views_once_per_actor_each_epoch_its_own(ray_session, tmp_path):
    rows, batch = 48, 8
    exp = tiny_exp(tmp_path, batch)
    shards = one_shard(exp, rows)
    plans = [plan_epoch(shards, seed=exp["train"]["seed"], epoch=e, world_size=1) for e in range(3)]
    log = tmp_path / "built.txt"
    ds = stage_dataset(exp, plans, rank=0, cpus=2, views_class=counted_views(str(log)))
    out = ds.take_batch(3 * rows, batch_format="numpy")
    # 6 read units (2 an epoch) on two actors (2 CPUs), each building its views once for all three
    # epochs, in its own process; the units are ready at once, so the first actor up may make them
    # all before the second has built its views
    built = log.read_text().split()
    assert 1 <= len(built) <= 2 and len(set(built)) == len(built), built
    # the epochs one after another, each the file's rows in order
    keys = key_ids(pq.read_table(shards[0].file, columns=["key"]).column("key").to_pylist())
    np.testing.assert_array_equal(out["epoch"], np.repeat([0, 1, 2], rows))
    np.testing.assert_array_equal(out["key_id"], np.tile(keys, 3))
    assert out["rows_done"].sum() == 3 * rows
    epoch = {e: {k: out[k][e * rows : (e + 1) * rows] for k in VIEWS} for e in range(3)}
    for a, b in ((0, 1), (1, 2), (0, 2)):  # every row's views differ from one epoch to the next
        for i in range(rows):
            assert any(not np.array_equal(epoch[a][k][i], epoch[b][k][i]) for k in VIEWS), (a, b, i)
        assert all(not np.array_equal(x, y) for x, y in zip(epoch[a]["local_crops"], epoch[b]["local_crops"]))
    # the same (seed, epoch) gives the same views, from a dataset that starts at that epoch (a resume), in tasks
    again = stage_dataset(tiny_exp(tmp_path, batch, TASKS), plans[1:2], rank=0, cpus=2)
    one = again.take_batch(rows, batch_format="numpy")
    for k in VIEWS:
        np.testing.assert_array_equal(one[k], epoch[1][k])


def run(exp, world: int, epoch: int, done: set[str], steps: int):
    """`steps` steps of `world` ranks as the training loop takes them (an epoch ends for all when one
    rank runs out): ({epoch: key ids trained}, the position after the last step: (epoch, files done))."""
    batch, shards = exp["data"]["batch_size"], train_shards(exp)
    seed = exp["train"]["seed"]
    plans = {p.epoch: p for p in plan_epochs(shards, seed, epoch, world, done, batch, steps)}
    ranks = [
        EpochBatches(stage_dataset(exp, list(plans.values()), r, cpus=1).iter_torch_batches(batch_size=None), batch)
        for r in range(world)
    ]
    trained, rows_done = {}, [0] * world
    while steps:
        batches = [data.next(epoch, lambda rows: None) for data in ranks]
        if any(b is None for b in batches):
            epoch, done, rows_done = epoch + 1, set(), [0] * world
            continue
        for r, b in enumerate(batches):
            rows_done[r] += int(b["rows_done"].sum())
            trained.setdefault(epoch, []).extend(b["key_id"].tolist())
        steps -= 1
    plan = plans[epoch]
    return trained, (epoch, done | plan.merge_done([plan.done_files(r, rows_done[r]) for r in range(world)]))


@pytest.mark.parametrize("steps, replayed", [(8, 2 * 16), (9, 0)], ids=["inside a file", "at a file's end"])
def test_a_position_across_an_epoch_boundary_resumes_without_skipping_or_replaying_more_than_a_file(
    ray_session, tmp_path, steps, replayed
):
    # 4 files of 24 rows, 2 ranks, batches of 8: an epoch is 6 steps (48 rows a rank). After 8 steps
    # each rank is 16 rows into its first file of epoch 1 (it replays them); after 9, through it.
    exp = tiny_exp(tmp_path, batch=8, actor_rows=TASKS)
    path = split_dir(exp["data"]["root"], exp["data"]["train_split"])
    generate_scenes(path, 96, size=56, rows_per_shard=24, parallel=False)
    before, (epoch, done) = run(exp, world=2, epoch=0, done=set(), steps=steps)
    assert epoch == 1 and len(before[0]) == 6 * 2 * 8 and len(done) == (2 if steps == 9 else 0)
    after, _ = run(exp, world=2, epoch=epoch, done=set(done), steps=6 - len(done) // 2 * 3)
    epoch1 = before[1] + after[1]
    assert sorted(set(epoch1)) == sorted(set(before[0]))  # every row of the epoch, none skipped
    assert len(epoch1) - len(set(epoch1)) == replayed  # at most the file each rank was in
