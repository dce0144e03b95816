import math

import pytest

from tipslab.jobs.bench.data import bench_data, median_run
from tipslab.jobs.data.scenes.generate import generate_scenes


def test_bench_data_measures_both_pipelines_on_the_same_shards(ray_session, tmp_path):
    # The views in actors (a long stage's); in tasks (`--views auto` on few rows), with the warm-up:
    # tests/orchestrator/test_bench_commands.py.
    generate_scenes(str(tmp_path / "shards"), 24, size=56, rows_per_shard=12, parallel=False)
    out = bench_data(
        str(tmp_path / "shards"), cpus=1, batch_size=6, image_size=56, local_crop_size=28, warmup=False, views="actors"
    )
    assert out["views"] == "actors" and out["epochs"] == 3
    for pipeline in ("raydata", "dataloader"):
        assert out[f"{pipeline}_images_per_s"] > 0 and out[f"{pipeline}_startup_s"] >= 0
        assert out[f"{pipeline}_images_per_s_per_cpu"] == out[f"{pipeline}_images_per_s"]  # one CPU
        assert math.isfinite(out[f"{pipeline}_images_per_cpu_s"]) and out[f"{pipeline}_images_per_cpu_s"] > 0
    assert math.isfinite(out["ratio"]) and out["ratio"] == pytest.approx(
        out["raydata_images_per_s"] / out["dataloader_images_per_s"]
    )
    assert out["augment"] == "dinov2" and out["cpus"] == 1
    # the views actor's start-up, within the time to the first batch; once it is ready the rate is higher
    assert 0 < out["raydata_actors_ready_s"] <= out["raydata_startup_s"]
    assert out["raydata_ready_images_per_s"] >= out["raydata_images_per_s"] or math.isnan(out["ready_ratio"])


def test_repeats_pair_the_pipelines_and_report_the_median_pair(ray_session, tmp_path):
    generate_scenes(str(tmp_path / "shards"), 24, size=56, rows_per_shard=12, parallel=False)
    out = bench_data(
        str(tmp_path / "shards"),
        cpus=1,
        batch_size=6,
        epochs=1,
        image_size=56,
        local_crop_size=28,
        warmup=False,
        views="tasks",
        repeats=2,
    )
    assert out["repeats"] == 2 and len(out["ratios"]) == 2 and all(r > 0 for r in out["ratios"])
    assert out["ratio"] == pytest.approx(sum(out["ratios"]) / 2)  # the median of two
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        bench_data(str(tmp_path / "shards"), cpus=1, batch_size=6, repeats=0)


def test_the_run_of_median_rate_stands_for_its_pipeline():
    runs = [(0.1, 300.0), (0.2, 100.0), (0.3, 200.0), (0.4, 400.0)]
    assert median_run(runs[:3]) == (0.3, 200.0)
    assert median_run(runs) == (0.3, 200.0)  # an even count: the lower middle
    assert median_run(runs[:1]) == runs[0]


def test_too_few_rows_for_a_measurement_is_a_clear_error_before_any_work(tmp_path):
    generate_scenes(str(tmp_path / "shards"), 12, size=56, parallel=False)
    with pytest.raises(ValueError, match="12 rows make fewer than 2 batches of 8"):
        bench_data(str(tmp_path / "shards"), cpus=1, batch_size=8)
    with pytest.raises(ValueError, match="10 rows make fewer than 2 batches of 6"):
        bench_data(str(tmp_path / "shards"), cpus=1, batch_size=6, rows=10)


def test_settle_waits_for_quiet_cpus_and_no_longer_than_its_bound():
    import os
    import subprocess
    import sys
    import time

    from tipslab.jobs.bench.data import settle

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)
        start = time.monotonic()
        settle(max_s=1.0)  # every CPU busy: it waits its bound, then returns
        waited = time.monotonic() - start
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert 1.0 <= waited < 3.0
