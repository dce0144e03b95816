"""L_distill and L_mim: DINO centring (EMA buffer), sharpened targets, cross-entropy to the student."""
import numpy as np
import pytest
import torch

from tipslab.models.distill import CenteredTeacherTargets, DistillLoss, cross_entropy_to_targets
from tipslab.models.mim import MIMLoss

K = 12


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
