"""L_distill and L_mim: DINO centring (EMA buffer), sharpened targets, cross-entropy to the student."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tipslab.models.distill import CenteredTeacherTargets, DistillLoss, cross_entropy_to_targets
from tipslab.models.mim import MIMLoss

K = 12

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g)


def np_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def test_center_is_an_ema_of_the_batch_mean():
    m = 0.8
    targets = CenteredTeacherTargets(K, m)
    assert torch.equal(targets.center, torch.zeros(1, K))
    a, b = logits(5, K, seed=1), logits(7, K, seed=2)
    targets(a, 0.04)
    c1 = (1 - m) * a.mean(0, keepdim=True)
    torch.testing.assert_close(targets.center, c1)
    targets(b, 0.04)
    torch.testing.assert_close(targets.center, m * c1 + (1 - m) * b.mean(0, keepdim=True))


def test_targets_use_the_center_before_the_update_and_sum_to_one():
    m, temp = 0.9, 0.07
    targets = CenteredTeacherTargets(K, m)
    a, b = logits(4, K, seed=3), logits(6, K, seed=4)
    p_a = targets(a, temp)
    np.testing.assert_allclose(p_a.numpy(), np_softmax(a.double().numpy() / temp), rtol=1e-5, atol=1e-7)
    center = targets.center.clone()
    p_b = targets(b, temp)
    np.testing.assert_allclose(p_b.numpy(), np_softmax((b - center).double().numpy() / temp), rtol=1e-5, atol=1e-7)
    for p in (p_a, p_b):
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[0]))


def test_targets_carry_no_gradient_and_lower_temperature_sharpens():
    teacher = logits(4, K, seed=5).requires_grad_(True)
    sharp = CenteredTeacherTargets(K, 0.9)(teacher, 0.04)
    soft = CenteredTeacherTargets(K, 0.9)(teacher, 0.5)
    assert not sharp.requires_grad

    def entropy(p):
        return -(p * p.clamp_min(1e-30).log()).sum(-1)

    assert (entropy(sharp) < entropy(soft)).all()
    assert torch.equal(sharp.argmax(-1), soft.argmax(-1))


def test_center_is_state():
    loss = DistillLoss(K, 0.1, 0.9)
    assert "targets.center" in loss.state_dict()
    assert loss.state_dict()["targets.center"].shape == (1, K)
    assert "targets.center" in MIMLoss(K, 0.1, 0.9).state_dict()


def test_distill_loss_equals_hand_computed_cross_entropy():
    b, v = 3, 2
    s_temp, t_temp, m = 0.1, 0.04, 0.9
    loss_fn = DistillLoss(K, s_temp, m)
    with torch.no_grad():
        loss_fn.targets.center.copy_(logits(1, K, seed=9, scale=0.5))
    center = loss_fn.targets.center.double().numpy()[0]
    student, teacher = logits(b, v, K, seed=7), logits(b, K, seed=8)
    got = loss_fn(student, teacher, t_temp)

    s, t = student.double().numpy(), teacher.double().numpy()
    total = 0.0
    for i in range(b):
        target = np_softmax((t[i] - center) / t_temp)
        for j in range(v):
            z = s[i, j] / s_temp
            log_p = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
            total += -(target * log_p).sum()
    assert got.item() == pytest.approx(total / (b * v), rel=1e-5)
    # and the centre moved by the teacher's batch mean
    np.testing.assert_allclose(loss_fn.targets.center.numpy()[0], m * center + (1 - m) * t.mean(0), rtol=1e-5)


def test_distill_gradient_goes_to_student_only():
    student = logits(2, 3, K, seed=1).requires_grad_(True)
    teacher = logits(2, K, seed=2).requires_grad_(True)
    DistillLoss(K, 0.1, 0.9)(student, teacher, 0.04).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_cross_entropy_is_minimal_at_the_targets():
    targets = torch.softmax(logits(5, K, seed=3), -1)
    temp = 0.1
    matched = temp * targets.log()  # softmax(matched / temp) == targets
    entropy = -(targets * targets.log()).sum(-1).mean()
    torch.testing.assert_close(cross_entropy_to_targets(matched, targets, temp), entropy)
    other = cross_entropy_to_targets(logits(5, K, seed=4), targets, temp)
    assert other > entropy + 0.1


def test_mim_loss_equals_hand_computed_cross_entropy():
    m_patches = 9
    s_temp, t_temp = 0.1, 0.05
    loss_fn = MIMLoss(K, s_temp, 0.9)
    student, teacher = logits(m_patches, K, seed=11), logits(m_patches, K, seed=12)
    got = loss_fn(student, teacher, t_temp)
    target = np_softmax(teacher.double().numpy() / t_temp)  # centre starts at 0
    z = student.double().numpy() / s_temp
    log_p = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    assert got.item() == pytest.approx(-(target * log_p).sum(-1).mean(), rel=1e-5)
    torch.testing.assert_close(loss_fn.targets.center, 0.1 * teacher.mean(0, keepdim=True))


def test_mim_loss_with_no_masked_patches_is_zero_with_a_graph():
    loss_fn = MIMLoss(K, 0.1, 0.9)
    student = torch.zeros(0, K, requires_grad=True)
    loss = loss_fn(student, torch.zeros(0, K), 0.04)
    assert loss.shape == () and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()  # does not raise
    assert student.grad is not None and student.grad.shape == (0, K)
    assert torch.equal(loss_fn.targets.center, torch.zeros(1, K))  # no empty batch mean (NaN) in the centre


# --- known answers --------------------------------------------------------------------------


def entropy_np(p):
    return -(p * np.log(p)).sum(-1)


@pytest.mark.parametrize("loss_cls", [DistillLoss, MIMLoss])
def test_identical_student_and_teacher_distributions_give_the_teachers_entropy(loss_cls):
    s_temp, t_temp = 0.1, 0.04
    teacher = logits(6, K, seed=21, scale=0.2)
    student = teacher * (s_temp / t_temp)  # softmax(student / T_s) == softmax(teacher / T_t); centre is 0
    if loss_cls is DistillLoss:
        student = student.unsqueeze(1).expand(6, 3, K)  # every local crop matches
    got = loss_cls(K, s_temp, 0.9)(student, teacher, t_temp).item()
    want = entropy_np(np_softmax(teacher.double().numpy() / t_temp)).mean()
    assert got == pytest.approx(want, rel=1e-5)
    assert 0.1 < want < np.log(K)  # a real, non-degenerate entropy


def test_a_uniform_teacher_gives_log_k_against_a_uniform_student_and_more_otherwise():
    teacher = torch.full((4, K), 2.5)  # equal scores: uniform targets at any temperature
    flat = torch.full((4, 2, K), -1.0)
    assert DistillLoss(K, 0.1, 0.9)(flat, teacher, 0.04).item() == pytest.approx(np.log(K), rel=1e-6)
    assert MIMLoss(K, 0.1, 0.9)(flat[:, 0], teacher, 0.04).item() == pytest.approx(np.log(K), rel=1e-6)
    # against any student: H(u, q) = logsumexp(z) - mean(z) >= log K
    student = logits(4, 2, K, seed=22)
    z = student.double().numpy() / 0.1
    lse = z.max(-1) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))
    want = (lse - z.mean(-1)).mean()
    assert DistillLoss(K, 0.1, 0.9)(student, teacher, 0.04).item() == pytest.approx(want, rel=1e-5)
    assert want > np.log(K) + 0.5


def test_distill_with_no_local_crops_is_a_clear_error_not_nan():
    loss_fn = DistillLoss(K, 0.1, 0.9)
    with pytest.raises(ValueError, match="local_crops"):
        loss_fn(torch.zeros(3, 0, K), logits(3, K), 0.04)
    assert torch.equal(loss_fn.targets.center, torch.zeros(1, K))  # nothing half-done


def test_centre_update_with_no_rows_keeps_the_centre():
    targets = CenteredTeacherTargets(K, 0.9)
    targets(logits(3, K, seed=1), 0.04)
    before = targets.center.clone()
    targets.update(torch.zeros(0, K))
    assert torch.equal(targets.center, before) and torch.isfinite(targets.center).all()


# --- across ranks ---------------------------------------------------------------------------

WORLD = 2
# Rows per rank and step: the MIM counts differ across ranks, and rank 1 masks nothing at step 2.
MIM_ROWS = [(5, 2), (3, 0)]  # [step][rank]
DISTILL_ROWS = [(3, 5)]


def rank_rows(step: int, rank: int, n: int, kind: str) -> torch.Tensor:
    return logits(n, K, seed=100 * step + 10 * rank + (kind == "mim"))


def _centre_worker(rank: int, port: int, out_dir: str) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    # A short timeout turns a hang (a rank skipping the collective) into an error.
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        mim, distill = MIMLoss(K, 0.1, 0.9), DistillLoss(K, 0.1, 0.9)
        losses = []
        for step, counts in enumerate(MIM_ROWS):
            n = counts[rank]
            student = logits(n, K, seed=7).requires_grad_(True)
            loss = mim(student, rank_rows(step, rank, n, "mim"), 0.04)
            loss.backward()
            losses.append(loss.item())
        for step, counts in enumerate(DISTILL_ROWS):
            b = counts[rank]
            distill(logits(b, 2, K, seed=8), rank_rows(step, rank, b, "distill"), 0.04)
        torch.save(
            {"mim": mim.targets.center, "distill": distill.targets.center, "losses": losses},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_centres_average_every_masked_patch_across_ranks_even_with_none_on_a_rank(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork, not spawn: the children need nothing re-imported, which keeps this test about a second
    mp.start_processes(_centre_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    def ema_of_global_means(steps, kind):
        center = torch.zeros(1, K)
        for step, counts in enumerate(steps):
            rows = torch.cat([rank_rows(step, r, n, kind) for r, n in enumerate(counts)])
            # the global mean over patches, not the mean of the ranks' means
            center = 0.9 * center + 0.1 * rows.mean(0, keepdim=True)
        return center

    for kind, steps in (("mim", MIM_ROWS), ("distill", DISTILL_ROWS)):
        want = ema_of_global_means(steps, kind)
        for out in ranks:
            torch.testing.assert_close(out[kind], want)
    # the ranks' means would differ from it: the test tells the two apart
    per_rank = 0.5 * (rank_rows(0, 0, 3, "distill").mean(0) + rank_rows(0, 1, 5, "distill").mean(0))
    assert not torch.allclose(0.1 * per_rank, ranks[0]["distill"][0], atol=1e-4)
    assert ranks[1]["losses"][1] == 0.0 and ranks[0]["losses"][1] > 0  # the rank with no patch: 0, no hang


@pytest.mark.parametrize("ratio, patches", [(0.75, 16), (0.5, 9), (0.0, 4), (1.0, 4)])
def test_masked_tokens_are_the_boolean_selection_without_a_host_read(ratio, patches):
    # The student and the teacher pick the masked patches by a gather of static size: exactly what
    # boolean indexing selects, in the same order, for masks of the pipeline's fixed count per row.
    from tipslab.jobs.data.pipeline.masking import make_mask
    from tipslab.models.config import masked_count
    from tipslab.models.mim import masked_tokens

    rng = np.random.default_rng(int(ratio * 100) + patches)
    grid = int(patches**0.5)
    masks = torch.from_numpy(np.stack([make_mask(rng, mode, grid, ratio) for mode in ("random", "blockwise") * 3]))
    tokens = torch.randn(6, patches, 5)
    count = masked_count(ratio, patches)
    assert (masks.sum(1) == count).all()
    picked = masked_tokens(tokens, masks, count)
    assert picked.shape == (6 * count, 5)
    assert torch.equal(picked, tokens[masks])


def fit_to_unpredictable_targets(head, steps=300):
    """Train a head on random inputs against random one-hot targets (nothing to learn) with the
    student temperature; returns the final loss."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=0.01, weight_decay=0.05)
    for _ in range(steps):
        x = torch.randn(64, 8, generator=g)
        targets = torch.eye(K)[torch.randint(0, K, (64,), generator=g)]
        loss = cross_entropy_to_targets(head(x), targets, student_temp=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_the_prototype_gain_is_fixed_at_one_and_keeps_the_scores_apart():
    """DINO's norm_last_layer. A head facing targets it cannot predict is pushed towards scoring
    every prototype alike (loss ln K, where L_distill sat on the scenes). A learnt gain gives it the
    easy way there: it shrinks. Fixed at 1, the gain stays, and the scores keep several times the
    spread."""
    from tipslab.models.heads import PrototypeHead

    torch.manual_seed(0)
    fixed = PrototypeHead(8, 16, 8, K)
    gain = fixed.prototypes.parametrizations.weight.original0
    assert not gain.requires_grad and torch.all(gain == 1)
    assert torch.allclose(fixed.prototypes.weight.norm(dim=1), torch.ones(K))
    fit_to_unpredictable_targets(fixed)
    assert torch.all(gain == 1)

    torch.manual_seed(0)
    learnt = PrototypeHead(8, 16, 8, K, norm_last_layer=False)
    learnt_gain = learnt.prototypes.parametrizations.weight.original0
    start = learnt_gain.abs().mean().item()
    loss = fit_to_unpredictable_targets(learnt)
    assert learnt_gain.abs().mean().item() < 0.3 * start
    assert loss == pytest.approx(np.log(K), abs=0.05)
    x = torch.randn(256, 8)
    with torch.no_grad():
        assert fixed(x).std(dim=1).mean() > 3 * learnt(x).std(dim=1).mean()
