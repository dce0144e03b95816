"""Sinkhorn-Knopp centring of the teacher targets (loss.centering: sinkhorn_knopp, DINOv2's):
balanced prototypes, rows that sum to 1, the same targets across ranks as on all rows at once."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tipslab.models.distill import DistillLoss, SinkhornKnoppTargets, cross_entropy_to_targets, sinkhorn_knopp
from tipslab.models.mim import MIMLoss

K = 12

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def logits(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g)


def numpy_sinkhorn(scores: np.ndarray, temp: float, iterations: int) -> np.ndarray:
    """DINOv2's steps as its paper describes them, on prototypes x samples: Q = exp(scores / T)
    normalised to a total of 1; then, each iteration, every prototype's row to 1/K and every
    sample's column to 1/B; finally the columns scaled back to 1."""
    q = np.exp(scores.T.astype(np.float64) / temp)
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(1, keepdims=True)
        q /= k
        q /= q.sum(0, keepdims=True)
        q /= b
    return (q * b).T


def test_targets_follow_dinov2s_steps():
    scores = logits(20, K, seed=1)
    for iterations in (1, 3):
        got = sinkhorn_knopp(scores, 0.1, iterations)
        np.testing.assert_allclose(got.numpy(), numpy_sinkhorn(scores.numpy(), 0.1, iterations), rtol=1e-4, atol=1e-8)
    assert torch.equal(scores, logits(20, K, seed=1))  # the teacher's scores are left as they were


def test_rows_sum_to_one_and_the_prototypes_come_out_uniform_over_the_batch():
    # Scores of about the spread a teacher's cosines have at its temperature (std 2 after / T);
    # much sharper rows need more than DINOv2's 3 iterations to balance.
    n, temp = 48, 0.5
    scores = logits(n, K, seed=2)
    softmax = torch.softmax(scores / temp, -1)
    spread = (softmax.sum(0) - n / K).abs().max()
    assert spread > 1.0  # a softmax leaves the prototypes far from balanced
    three = sinkhorn_knopp(scores, temp, 3)
    many = sinkhorn_knopp(scores, temp, 200)
    for q in (three, many):
        assert (q >= 0).all()
        torch.testing.assert_close(q.sum(1), torch.ones(n))
    assert (three.sum(0) - n / K).abs().max() < 0.1 * spread  # DINOv2's 3 iterations: most of the way
    torch.testing.assert_close(many.sum(0), torch.full((K,), n / K), rtol=0, atol=1e-4)


def test_a_balanced_plan_is_its_own_target():
    # Rows summing to 1 and prototypes each carrying n/K: Sinkhorn-Knopp has nothing to change.
    g = torch.Generator().manual_seed(3)
    perms = [torch.eye(K)[torch.randperm(K, generator=g)] for _ in range(4)]
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    plan = sum(w * p for w, p in zip(weights, perms))  # doubly stochastic (Birkhoff)
    plan = torch.cat([plan, plan.flip(0)])  # 2K rows, each prototype 2 = n/K
    temp = 0.05
    got = sinkhorn_knopp(temp * plan.clamp_min(1e-30).log(), temp, 3)
    torch.testing.assert_close(got, plan, rtol=1e-4, atol=1e-6)


def test_an_offset_per_prototype_is_removed_exactly_what_centring_is_for():
    # A prototype every row scores higher (the collapse that centring fights) changes nothing.
    scores, temp = logits(30, K, seed=4), 0.1
    offset = torch.linspace(-2.0, 2.0, K)
    torch.testing.assert_close(sinkhorn_knopp(scores + offset, temp, 3), sinkhorn_knopp(scores, temp, 3))
    # and a large common shift cannot overflow exp
    big = sinkhorn_knopp(scores + 100.0, temp, 3)  # exp(1000) without the shift
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big, sinkhorn_knopp(scores, temp, 3), rtol=1e-3, atol=1e-5)


def test_no_rows_give_no_targets_and_no_nan():
    got = sinkhorn_knopp(torch.zeros(0, K), 0.04, 3)
    assert got.shape == (0, K)
    loss = MIMLoss(K, 0.1, 0.9, centering="sinkhorn_knopp")
    student = torch.zeros(0, K, requires_grad=True)
    assert loss(student, torch.zeros(0, K), 0.04).item() == 0.0


@pytest.mark.parametrize("loss_cls", [DistillLoss, MIMLoss])
def test_the_losses_use_the_sinkhorn_targets_and_keep_no_centre(loss_cls):
    s_temp, t_temp = 0.1, 0.05
    loss_fn = loss_cls(K, s_temp, 0.9, centering="sinkhorn_knopp", sinkhorn_iterations=3)
    assert isinstance(loss_fn.targets, SinkhornKnoppTargets)
    assert loss_fn.state_dict() == {}  # stateless: nothing to checkpoint
    teacher = logits(8, K, seed=5)
    student = logits(8, 2, K, seed=6) if loss_cls is DistillLoss else logits(8, K, seed=6)
    got = loss_fn(student, teacher, t_temp)
    target = torch.from_numpy(numpy_sinkhorn(teacher.numpy(), t_temp, 3)).float()
    if loss_cls is DistillLoss:  # each local crop of a sample against that sample's target
        want = cross_entropy_to_targets(student.reshape(16, K), target.repeat_interleave(2, 0), s_temp)
    else:
        want = cross_entropy_to_targets(student, target, s_temp)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() != pytest.approx(loss_cls(K, s_temp, 0.9)(student, teacher, t_temp).item(), rel=1e-3)


# --- across ranks ---------------------------------------------------------------------------

WORLD = 2
ROWS = [(5, 3), (4, 0)]  # [step][rank]: masked-patch counts that differ by rank, and none on rank 1


def rank_rows(step: int, rank: int, n: int) -> torch.Tensor:
    return logits(n, K, seed=100 * step + 10 * rank, scale=2.0)


def _sinkhorn_worker(rank: int, port: int, out_dir: str) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    # A short timeout turns a hang (a rank skipping a collective) into an error.
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        mim = MIMLoss(K, 0.1, 0.9, centering="sinkhorn_knopp")
        targets, losses = [], []
        for step, counts in enumerate(ROWS):
            n = counts[rank]
            targets.append(sinkhorn_knopp(rank_rows(step, rank, n), 0.04, 3))
            losses.append(mim(logits(n, K, seed=7), rank_rows(step, rank, n), 0.04).item())
        torch.save({"targets": targets, "losses": losses}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sinkhorn_across_ranks_equals_sinkhorn_on_every_rows_at_once(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork, not spawn: the children need nothing re-imported
    mp.start_processes(_sinkhorn_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for step, counts in enumerate(ROWS):
        everything = sinkhorn_knopp(torch.cat([rank_rows(step, r, n) for r, n in enumerate(counts)]), 0.04, 3)
        for rank, (mine, start) in enumerate(zip(ranks, (0, counts[0]))):
            got = mine["targets"][step]
            assert got.shape == (counts[rank], K)
            torch.testing.assert_close(got, everything[start : start + counts[rank]])
            if counts[rank]:
                want = cross_entropy_to_targets(logits(counts[rank], K, seed=7), got, 0.1).item()
                assert mine["losses"][step] == pytest.approx(want, rel=1e-5)
        # a rank's own rows balanced alone would differ: the test tells the two apart
        alone = sinkhorn_knopp(rank_rows(step, 0, counts[0]), 0.04, 3)
        if counts[1]:
            assert not torch.allclose(alone, everything[: counts[0]], atol=1e-3)
    assert ranks[1]["losses"][1] == 0.0  # no masked patch on that rank: 0, and no hang
