"""The training input pipeline (jobs/data/pipeline/streaming.py): how a rank's files become blocks and views,
one dataset for a stage's epochs, and how every input row is counted."""

import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, spoil_rows, tiny_overrides

from tipslab.jobs.data.pipeline.columns import TRAIN_COLUMNS
from tipslab.jobs.data.pipeline.flow import HandOnAtOnce, PauseWhenIdle, blocks_ahead, views_flow
from tipslab.jobs.data.pipeline.shard_read import (
    BATCHES_PER_BLOCK,
    TASK_BATCHES,
    block_units,
    read_split,
    read_unit,
    read_units,
    unit_blocks,
    unit_rows,
    units_dataset,
)
from tipslab.jobs.data.pipeline.streaming import (
    COUNT_COLUMNS,
    PositionedViews,
    Shard,
    key_ids,
    plan_epoch,
    plan_epochs,
    split_dir,
    stage_dataset,
    train_shards,
    views_actors,
)
from tipslab.jobs.data.pipeline.views import BAD_ROW_COLUMNS, TIPSViews
from tipslab.jobs.data.scenes.generate import generate_scenes, scene_row
from tipslab.models.errors import DataError
from tipslab.models.tokenizer import HashTokenizer
from tipslab.orchestrator.config import load_experiment, to_dict

BASE = REPO / "ablations" / "base" / "tips_tiny.yaml"
# How a row is spoiled, and the counter it must land in.
SPOIL = {
    "not_an_image": ("image", b"not an image"),
    "truncated": ("image", b"\x89PNG\r\n\x1a\n truncated"),
    "empty_caption": ("web_caption", "   "),
}


def test_a_piece_is_cut_into_read_units_of_about_four_whole_batches_the_first_batch_alone():
    assert BATCHES_PER_BLOCK == 4
    assert read_split(rows=256, batch_size=32) == 2  # 8 batches, 4 per unit
    assert read_split(rows=96, batch_size=8) == 3
    assert read_split(rows=20, batch_size=32) == 1  # never fewer than one unit a piece
    units = read_units([(0, "a", 256), (0, "b", 100), (1, "a", 20)], batch_size=32)
    # the dataset's first batch a unit of its own (its views leave at once), then the piece's 224
    # rows left in 2 units of whole batches; the later pieces as they come
    assert [(u["epoch"], u["file"], u["start"], u["stop"]) for u in units] == [
        (0, "a", 0, 32),
        (0, "a", 32, 160),
        (0, "a", 160, 256),
        (0, "b", 0, 100),
        (1, "a", 0, 20),
    ]
    # 100 rows in batches of 8: the first batch, then 92 rows: 3 units of 31 rows would cut
    # batches; whole batches instead
    assert [(u["start"], u["stop"]) for u in read_units([(0, "b", 100)], batch_size=8)] == [
        (0, 8),
        (8, 40),
        (40, 72),
        (72, 100),
    ]
    # a first piece of one batch or less is its own unit already
    assert [(u["start"], u["stop"]) for u in read_units([(0, "a", 20), (0, "b", 64)], batch_size=32)] == [
        (0, 20),
        (0, 64),
    ]


def test_a_pool_of_tasks_takes_its_units_a_few_at_a_time_fewer_towards_the_end():
    units = [{"start": 0, "stop": n} for n in (32, 32, 32, 32, 8, 32, 96, 32, 16)]
    sizes = [[u["stop"] for u in block] for block in unit_blocks(units)]
    assert sizes == [[n] for n in (32, 32, 32, 32, 8, 32, 96, 32, 16)]  # actors: a unit a call
    # the first unit alone (the stage's first batch); then blocks of at least 64 rows while 2
    # workers have 128 rows or more left each, then of half what is left
    sizes = [[u["stop"] for u in block] for block in unit_blocks(units, rows=64, workers=2)]
    assert sizes == [[32], [32, 32], [32, 8, 32], [96], [32], [16]]
    # 8 units of 32 rows, blocks of up to 4: after the first, the 2 workers would take 4 and 3 were
    # the blocks all full, one running the last 3 alone; instead 4, 2, 1 (each worker 4 units in all)
    even = [{"start": 0, "stop": 32}] * 8
    assert [len(b) for b in unit_blocks(even, rows=128, workers=2)] == [1, 4, 2, 1]
    assert [len(b) for b in unit_blocks(even, rows=128, workers=1)] == [1, 4, 3]
    assert unit_blocks(units[:1], rows=64, workers=2) == [units[:1]] and unit_blocks([], rows=64, workers=2) == []


def test_the_units_dataset_hands_its_units_over_in_order_a_row_each_or_in_lists(ray_session):
    pieces = [(0, "a", 256), (0, "b", 100), (1, "c", 20), (1, "d", 64)]
    units = [tuple(u.values()) for u in read_units(pieces, batch_size=8)]  # 1 + 8 + 4 + 1 + 2 units
    assert len(units) == 16
    # a unit a block; 5 batches (40 rows) for 2 workers: [a0] [a1 a2] [a3 a4] [a5 a6] [a7 a8]
    # [b0 b1] [b2 b3 c] [d0] [d1]; 4 batches (32 rows) for 1: one a block (a list of one), but
    # [a8 b0] and [b3 c d0]
    for grouping, blocks in (({}, 16), ({"block_batches": 5, "workers": 2}, 9), ({"block_batches": 4}, 13)):
        rows = unit_rows(pieces, 8, **grouping)
        ds = units_dataset(rows)
        assert ds.num_blocks() == len(rows) == blocks
        got = [u for b in ds.iter_batches(batch_size=None, batch_format="numpy") for u in block_units(b)]
        assert [(int(e), str(f), int(a), int(z)) for e, f, a, z in got] == units


def test_the_views_flow_settings_are_ray_datas_and_stay_in_their_dataset(ray_session):
    import ray.data

    names = ("target_max_block_size", "_max_num_blocks_in_streaming_gen_buffer")
    names += ("op_resource_reservation_enabled", "downstream_capacity_backpressure_ratio")
    assert all(hasattr(ray.data.DataContext(), name) for name in names)  # Ray renamed none of them
    before = [getattr(ray.data.DataContext.get_current(), name) for name in names]
    ds = views_flow(ray.data.range(4), batch_bytes=1000, workers=3)
    # a block closes past 3.5 batches (4 of them), never cut below 5.25; a whole task's 32 batches
    # (8 blocks) may wait in its generator's buffer
    assert [getattr(ds.context, name) for name in names] == [3500, 8, False, 3.0 * TASK_BATCHES]
    assert PauseWhenIdle in ds.context.custom_execution_callback_classes
    assert PauseWhenIdle in ds.context.execution_callback_classes  # what Ray Data's executor instantiates
    assert HandOnAtOnce in ds.context.execution_callback_classes
    assert [getattr(ray.data.DataContext.get_current(), name) for name in names] == before
    assert ds.context.execution_options.preserve_order  # rows in order: the position is a row count
    assert not ray.data.DataContext.get_current().execution_options.preserve_order  # the process's own, untouched
    assert views_flow(ray.data.range(4), 0, 1).context.target_max_block_size == before[0]


def test_the_batches_taken_ahead_are_whole_blocks_at_least_one():
    # train.prefetch_batches counts batches; the loop takes blocks of BATCHES_PER_BLOCK (4) of them
    assert [blocks_ahead(n) for n in (0, 1, 2, 4, 5, 8, 9)] == [1, 1, 1, 1, 2, 2, 3]


def test_the_scheduling_loop_pauses_in_steps_that_change_nothing(monkeypatch):
    from ray.data._internal.execution.interfaces.op_runtime_metrics import OpRuntimeMetrics

    from tipslab.jobs.data.pipeline import flow

    fields = ("num_tasks_submitted", "num_tasks_finished", "num_task_outputs_generated", "num_outputs_taken")
    assert all(hasattr(OpRuntimeMetrics, name) for name in fields)  # the counters it reads are Ray Data's
    slept = []
    monkeypatch.setattr(flow.time, "sleep", slept.append)

    class Op:  # an operator's counters, as Ray Data's executor holds them
        def __init__(self):
            self.metrics = type("Metrics", (), dict.fromkeys(fields, 0))()

    ops = [Op(), Op()]
    executor = type("Executor", (), {"_topology": dict.fromkeys(ops)})()
    pause = PauseWhenIdle()
    pause.on_execution_step(executor)  # the first step: nothing to compare with
    pause.on_execution_step(executor)  # nothing changed: a pause
    ops[1].metrics.num_outputs_taken = 1  # the consumer took an output: no pause
    pause.on_execution_step(executor)
    pause.on_execution_step(executor)
    assert slept == [flow.IDLE_PAUSE_S, flow.IDLE_PAUSE_S]


def test_a_read_unit_reads_its_rows_from_the_row_groups_that_hold_them(tmp_path):
    import pyarrow as pa

    path = str(tmp_path / "groups.parquet")
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(50)], "n": list(range(50))}), path, row_group_size=16)
    batch = read_unit(path, ["key"], epoch=3, start=10, stop=40)  # groups 0..2 of 16 rows
    assert batch["key"].tolist() == [f"k{i}" for i in range(10, 40)]
    assert batch["epoch"].tolist() == [3] * 30 and batch["epoch"].dtype == np.int64
    assert sorted(batch) == ["epoch", "key"]
    assert read_unit(path, ["n"], epoch=0, start=48, stop=50)["n"].tolist() == [48, 49]  # the last group only
    # a file that is not Parquet (or is gone) is named, with the rows that were wanted
    (tmp_path / "broken.parquet").write_bytes(b"not parquet" * 10)
    for name in ("broken.parquet", "gone.parquet"):
        with pytest.raises(DataError, match=rf"shard file {tmp_path / name}: cannot read its rows 0\.\.7: "):
            read_unit(str(tmp_path / name), ["key"], epoch=0, start=0, stop=8)


def test_every_rank_reads_as_many_rows_as_the_rank_dealt_the_fewest():
    # 5 files of 10..14 rows over 2 ranks: 3 files and 2; the rank of 2 has the fewest rows
    shards = [Shard(f"f{i}", 10 + i) for i in range(5)]
    plan = plan_epoch(shards, seed=0, epoch=0, world_size=2)
    totals = [sum(s.num_rows for s in files) for files in plan.files]
    assert plan.rows == min(totals) and sum(totals) == 60
    for rank in (0, 1):
        pieces = plan.pieces(rank)
        assert sum(rows for _, rows in pieces) == plan.rows
        assert [f for f, _ in pieces] == [s.file for s in plan.files[rank]][: len(pieces)]  # in order
    assert plan.batches(batch_size=8) == plan.rows // 8
    # a dataset spans enough epochs for the steps, plus one: a few bad rows do not cost a new dataset
    plans = plan_epochs(shards, seed=0, first=3, world_size=2, done=set(), batch_size=8, steps=7)
    batches = [p.batches(8) for p in plans]
    assert [p.epoch for p in plans] == list(range(3, 3 + len(plans)))
    assert sum(batches[:-1]) >= 7 > sum(batches[:-2]) and min(batches) >= 2  # 21 rows or more an epoch
    assert plans[0] == plan_epoch(shards, 0, 3, 2) and plans[1] == plan_epoch(shards, 0, 4, 2)
    # the files done are left out of the first epoch only
    done = {plans[0].files[0][0].file}
    again = plan_epochs(shards, seed=0, first=3, world_size=2, done=done, batch_size=8, steps=7)
    assert again[0] == plan_epoch(shards, 0, 3, 2, done) and again[1] == plans[1]


def test_views_actors_follow_the_ranks_cpus():
    assert [views_actors(c) for c in (0.25, 0.5, 1, 1.5, 2, 8)] == [1, 1, 1, 1, 2, 8]


def tiny_exp(root, batch: int, actor_rows: int = 0) -> dict:
    """actor_rows: data.views_actor_rows (0: the views in an actor pool, whatever the epoch's size)."""
    return to_dict(
        load_experiment(
            BASE,
            tiny_overrides(
                **{
                    "data.root": str(root),
                    "data.batch_size": batch,
                    "model.image_size": 56,
                    "data.local_crop_size": 28,
                    "data.views_actor_rows": actor_rows,
                }
            ),
        )
    )


def one_shard(exp: dict, rows: int, spoiled: dict[int, str] | None = None):
    """A training split of one shard file of `rows` scenes, rows `spoiled` made bad ({row: reason})."""
    path = split_dir(exp["data"]["root"], exp["data"]["train_split"])
    generate_scenes(path, rows, size=56, rows_per_shard=rows, parallel=False)
    shards = train_shards(exp)
    if spoiled:
        spoil_rows(shards[0].file, {i: SPOIL[reason] for i, reason in spoiled.items()})
    return shards


def watch(seen: list):
    """An execution step's record, for HandOnAtOnce: its executor's metadata fetcher's kind and how
    many views tasks (or actor calls) are out."""

    def on_execution_step(self, executor) -> None:
        active = [op.num_active_tasks() for op in executor._topology if "PositionedViews" in op.name]
        if active:  # the views dataset's executor (not a later one over its materialized blocks)
            seen.append((type(executor._metadata_fetcher).__name__, max(active)))

    return on_execution_step


@pytest.mark.parametrize("actor_rows, calls", [(0, 13), (97, 5)], ids=["actor pool", "tasks below views_actor_rows"])
def test_a_ranks_file_is_read_in_units_for_parallel_views_in_file_order(
    ray_session, tmp_path, monkeypatch, actor_rows, calls
):
    # One file of 96 rows, batches of 2, 2 CPUs: the first batch a read unit of its own, then the
    # 94 rows left in 12 units of 4 batches (the last of 3), in order. In the 2 views actors, a unit a
    # call; in tasks (a stage under data.views_actor_rows), the first unit alone, then up to
    # TASK_BATCHES (32) batches a task, fewer at the end (the rows left over the 2 workers): 1, 6, 3,
    # 2 and 1 units. Either way the views leave in blocks of 4 batches (views_flow), not a call's or
    # a task's whole, and the first batch in a block of its own: 13 blocks.
    # Tasks: one more than the workers waits for a CPU (3 handed to Ray at once). Each block is
    # handed on in the executor's step that finds it made (HandOnAtOnce: metadata fetched inline).
    rows, batch = 96, 2
    exp = tiny_exp(tmp_path, batch, actor_rows)
    shards = one_shard(exp, rows)
    seen = []
    monkeypatch.setattr(HandOnAtOnce, "on_execution_step", watch(seen), raising=False)
    ds = stage_dataset(exp, [plan_epoch(shards, seed=0, epoch=0, world_size=1)], rank=0, cpus=2).materialize()
    assert re.search(rf"PositionedViews\)[^:]*: {calls} tasks executed, 13 blocks produced", ds.stats())
    assert {fetcher for fetcher, _ in seen} == {"InlineMetadataFetcher"}
    if actor_rows:  # in tasks
        assert max(active for _, active in seen) == 3
    sizes = [len(block["key_id"]) for block in ds.iter_batches(batch_size=None, batch_format="numpy")]
    assert sizes == [batch] + [4 * batch] * 11 + [3 * batch]
    out = ds.take_batch(rows, batch_format="numpy")
    # preserve_order: the rows come in file order (the resumable position is a row count)
    keys = pq.read_table(shards[0].file, columns=["key"]).column("key").to_pylist()
    np.testing.assert_array_equal(out["key_id"], key_ids(keys))
    assert out["global_crop"].dtype == np.uint8
    # every views batch's input is counted on its last row
    assert out["rows_done"].sum() == out["rows_seen"].sum() == rows and out["bad_rows"].sum() == 0
    assert np.flatnonzero(out["rows_done"]).tolist() == list(range(batch - 1, rows, batch))


def views_of(**kw) -> PositionedViews:
    def make_views():
        return TIPSViews(
            image_size=56,
            patch_size=14,
            local_crops=1,
            local_crop_size=28,
            global_crop_scale=[0.8, 1.0],
            local_crop_scale=[0.3, 0.5],
            mask_ratio=0.5,
            tokenizer=HashTokenizer(100, 8),
        )

    return PositionedViews(make_views, **kw)


def block_of(first: int, n: int, bad: set[int]) -> dict:
    rows = [scene_row(s, "train", size=56) for s in range(first, first + n)]
    for i in bad:
        rows[i - first]["image"] = b"not an image"
    return {k: np.array([r[k] for r in rows], dtype=object) for k in TRAIN_COLUMNS}


def totals(batches) -> dict:
    return {c: int(sum(b[c].sum() for b in batches)) for c in COUNT_COLUMNS}


def test_batches_without_rows_pass_their_counts_on_within_the_block_and_to_the_next():
    v = views_of(batch_size=4)
    # 5 batches of 4: the first, the middle and the last two have no good row
    bad = set(range(0, 4)) | set(range(8, 12)) | set(range(12, 20))
    out = list(v.block(block_of(0, 20, bad)))
    assert [len(b["masks"]) for b in out] == [4]  # only batch 2 (rows 4..7) has rows
    assert totals(out)["rows_done"] == 20 and totals(out)["bad_rows"] == 16 and totals(out)["rows_seen"] == 20
    assert out[0]["rows_done"].tolist() == [0, 0, 0, 20]  # on the last row, with the counters
    # a block without one good row hands its counters to the actor's next call, which Ray Data may
    # run out of order: its rows_done stays behind (a replay of its file after a restart, not a skip)
    assert list(v.block(block_of(20, 6, set(range(20, 26))))) == []
    later = list(v.block(block_of(26, 6, {31})))
    assert [len(b["masks"]) for b in later] == [4, 1]
    assert totals(later) == {
        **dict.fromkeys(COUNT_COLUMNS, 0),
        "rows_seen": 12,
        "bad_rows": 7,
        "bad_not_an_image": 7,
        "rows_done": 6,
    }
    assert [b["rows_seen"].tolist() for b in later] == [[0, 0, 0, 10], [2]]  # 6 carried in, then 4 + 2
    assert [b["rows_done"].tolist() for b in later] == [[0, 0, 0, 4], [2]]


def test_shared_files_count_other_ranks_rows_as_done_but_not_seen():
    block = block_of(0, 16, set())
    ids = key_ids(block["key"])
    outs = [list(views_of(batch_size=4, rank=r, world_size=2, share=True).block(block)) for r in (0, 1)]
    for r, out in enumerate(outs):
        np.testing.assert_array_equal(np.concatenate([b["key_id"] for b in out]), ids[ids % 2 == r])
    assert sum(totals(out)["rows_seen"] for out in outs) == 16  # each row seen by one rank
    assert [totals(out)["rows_done"] for out in outs] == [16, 16]  # each rank is through the block


def test_every_bad_row_is_counted_through_the_pipeline_on_ray(ray_session, tmp_path):
    # 96 rows in 3 read units of 32 (4 views batches of 8) on 2 actors. Bad rows fill a whole views
    # batch at the end of the first block (24..31), one at the start of the last (64..71) and the
    # last of the file (88..95), plus a few in batches that keep good rows.
    rows, batch = 96, 8
    spoiled = {i: "not_an_image" for i in range(24, 32)}
    spoiled.update({i: "truncated" for i in range(64, 72)})
    spoiled.update({i: "empty_caption" for i in range(88, 96)})
    spoiled.update({3: "truncated", 40: "empty_caption", 41: "not_an_image"})
    exp = tiny_exp(tmp_path, batch)
    shards = one_shard(exp, rows, spoiled)
    ds = stage_dataset(exp, [plan_epoch(shards, seed=0, epoch=0, world_size=1)], rank=0, cpus=2)
    out = ds.take_batch(rows, batch_format="numpy")
    written = {
        f"bad_{r}": sum(1 for v in spoiled.values() if v == r) for r in ("not_an_image", "truncated", "empty_caption")
    }
    counted = {c: int(out[c].sum()) for c in COUNT_COLUMNS}
    assert counted == {
        **dict.fromkeys(BAD_ROW_COLUMNS, 0),
        **written,
        "rows_seen": rows,
        "bad_rows": len(spoiled),
        "rows_done": rows,
    }
    assert len(out["masks"]) == rows - len(spoiled)
    good = [i for i in range(rows) if i not in spoiled]  # the good rows, in file order
    keys = pq.read_table(shards[0].file, columns=["key"]).column("key").to_pylist()
    kept = out["key_id"] != -1
    np.testing.assert_array_equal(out["key_id"][kept], key_ids([keys[i] for i in good])[kept])
