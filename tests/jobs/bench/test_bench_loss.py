"""`bench loss`'s measurement: the chunked prototype cross-entropy never holds one [rows, K] tensor,
where the plain one holds several; both give the same loss."""

import pytest

from tipslab.jobs.bench.loss import bench_loss


def test_the_chunked_loss_holds_less_than_one_score_tensor_where_the_plain_holds_several():
    r = bench_loss(rows=512, prototypes=2048, dim=64, chunk_rows=64, repeats=1, threads=1)
    assert r["scores_mb"] == 4.0  # 512 x 2048 fp32
    assert r["plain_peak_mb"] >= 3 * r["scores_mb"]  # scores, their log-softmax, the gradients
    assert 0 < r["chunked_peak_mb"] < r["scores_mb"]  # chunks of 64 rows, the features, the gradients
    assert r["memory_ratio"] == pytest.approx(r["plain_peak_mb"] / r["chunked_peak_mb"]) and r["memory_ratio"] > 3
    assert r["chunked_loss"] == pytest.approx(r["plain_loss"], rel=1e-6)
    assert r["plain_s"] > 0 and r["chunked_s"] > 0 and r["precision"] == "fp32" and r["device_kind"] == "cpu"


def test_bf16_autocast_gives_the_same_loss_to_bf16_rounding():
    r = bench_loss(rows=64, prototypes=256, dim=16, chunk_rows=20, repeats=1, threads=1, bf16=True)
    assert r["precision"] == "bf16" and r["chunked_loss"] == pytest.approx(r["plain_loss"], rel=1e-3)


def test_sizes_below_one_are_refused():
    with pytest.raises(ValueError, match="chunk_rows"):
        bench_loss(rows=8, prototypes=8, dim=4, chunk_rows=0)
