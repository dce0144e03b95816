"""The chunked prototype cross-entropy (loss.chunk_rows, models/prototype_loss.py) against the plain
one: the same values and gradients (1e-6 in fp64) for any chunk size, through the real heads, with
both centrings, and for L_distill's repeated targets; N = 0 and N below the chunk."""

import pytest
import torch
import torch.nn.functional as F

from tipslab.models.distill import CenteredTeacherTargets, DistillLoss, cross_entropy_to_targets
from tipslab.models.heads import PrototypeHead
from tipslab.models.mim import MIMLoss, masked_tokens
from tipslab.models.prototype_loss import GivenTargets, prototype_cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, K, D = 10, 37, 8
EXACT = {"atol": 1e-6, "rtol": 0.0}  # the bound, in fp64


def rand(*shape, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(dtype)


def plain(features, weight, targets, temp):
    """The loss of models/distill.py written out, in the inputs' precision (its .float() would cast
    fp64 down): mean over rows of -sum_k p_k log_softmax(x W^T / T)_k."""
    return -(targets * F.log_softmax(features @ weight.t() / temp, dim=-1)).sum(-1).mean()


def value_and_grads(loss_fn, *leaves):
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    loss = loss_fn(*leaves)
    return loss.detach(), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("chunk", [1, 3, 4, N, N + 7])  # 3 and 4 leave a short last chunk; N + 7 > N
def test_values_and_gradients_match_the_plain_loss_in_fp64(chunk):
    x, w = rand(N, D, seed=1, scale=2.0), rand(K, D, seed=2)
    p = F.softmax(rand(N, K, seed=3, scale=3.0), dim=-1)
    want, (gx, gw) = value_and_grads(lambda x, w: plain(x, w, p, 0.1), x, w)
    got, (cx, cw) = value_and_grads(lambda x, w: prototype_cross_entropy(x, w, GivenTargets(p), 0.1, chunk), x, w)
    assert want > 1.0  # far from a trivial 0
    torch.testing.assert_close(got, want, **EXACT)
    torch.testing.assert_close(cx, gx, **EXACT)
    torch.testing.assert_close(cw, gw, **EXACT)
    assert cx.dtype == cw.dtype == torch.float64


def test_targets_that_do_not_sum_to_one_and_a_scaled_gradient():
    """The gradient is softmax(s) sum(p) - p, not softmax(s) - p: right for any targets; and the
    incoming gradient scales it (the objective's term weights)."""
    x, w = rand(N, D, seed=4), rand(K, D, seed=5)
    p = rand(N, K, seed=6).abs()  # rows summing to anything
    want, (gx, gw) = value_and_grads(lambda x, w: 2.5 * plain(x, w, p, 0.3), x, w)
    got, (cx, cw) = value_and_grads(lambda x, w: 2.5 * prototype_cross_entropy(x, w, GivenTargets(p), 0.3, 4), x, w)
    torch.testing.assert_close(got, want, **EXACT)
    torch.testing.assert_close(cx, gx, **EXACT)
    torch.testing.assert_close(cw, gw, **EXACT)


def test_scores_given_without_a_weight_are_chunked_alike():
    """weight None: the features are the scores [N, K]; the gradient is the scores'."""
    s, p = rand(N, K, seed=7, scale=3.0), F.softmax(rand(N, K, seed=8), dim=-1)
    loss = lambda s: -(p * F.log_softmax(s / 0.1, dim=-1)).sum(-1).mean()  # noqa: E731
    want, (gs,) = value_and_grads(loss, s)
    got, (cs,) = value_and_grads(lambda s: prototype_cross_entropy(s, None, GivenTargets(p), 0.1, 3), s)
    torch.testing.assert_close(got, want, **EXACT)
    torch.testing.assert_close(cs, gs, **EXACT)


def test_fp32_matches_the_plain_loss_of_the_code_closely():
    x, w = rand(64, 32, seed=9, dtype=torch.float32), F.normalize(rand(512, 32, seed=10, dtype=torch.float32), dim=-1)
    p = F.softmax(rand(64, 512, seed=11, dtype=torch.float32) / 0.04, dim=-1)
    want, (gx, gw) = value_and_grads(lambda x, w: cross_entropy_to_targets(x @ w.t(), p, 0.1), x, w)
    got, (cx, cw) = value_and_grads(lambda x, w: prototype_cross_entropy(x, w, GivenTargets(p), 0.1, 24), x, w)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cx, gx, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(cw, gw, atol=1e-6, rtol=1e-4)


def test_no_rows_is_zero_with_zero_gradients():
    x, w = torch.zeros(0, D, dtype=torch.float64), rand(K, D)
    got, (cx, cw) = value_and_grads(
        lambda x, w: prototype_cross_entropy(x, w, GivenTargets(torch.zeros(0, K)), 0.1, 4), x, w
    )
    assert got.item() == 0.0 and cx.shape == (0, D) and torch.equal(cw, torch.zeros(K, D, dtype=torch.float64))


def test_a_chunk_of_no_rows_is_refused():
    with pytest.raises(ValueError, match="chunk_rows"):
        prototype_cross_entropy(rand(N, D), rand(K, D), GivenTargets(rand(N, K)), 0.1, 0)


def heads(norm_last_layer: bool):
    torch.manual_seed(0)
    student = PrototypeHead(16, 24, D, K, norm_last_layer).double()
    teacher = PrototypeHead(16, 24, D, K, norm_last_layer).double().requires_grad_(False)
    return student, teacher


def masked_patches(b=3, patches=9, count=5, seed=12):
    """Tokens [B * count, 16] of the masked patches, as the student and the teacher gather them."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.stack([torch.randperm(patches, generator=g) < count for _ in range(b)])
    student_tokens, teacher_tokens = rand(b, patches, 16, seed=seed + 1), rand(b, patches, 16, seed=seed + 2)
    picked = masked_tokens(student_tokens, masks, count), masked_tokens(teacher_tokens, masks, count)
    torch.testing.assert_close(picked[0], student_tokens[masks])  # the masked patches, and only they
    return picked


@pytest.mark.parametrize("centering", ["mean", "sinkhorn_knopp"])
@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_mim_through_the_heads_matches_the_plain_loss(centering, norm_last_layer):
    """L_MIM on masked patches through weight-normalised prototype heads: the loss, the gradient of
    every head parameter (the prototype layer's direction, and its gain where it is learnt) and the
    centre after the step, plain against chunked in chunks of 4 (15 rows: a short last chunk)."""
    tokens, teacher_tokens = masked_patches()
    results = []
    for chunk in (0, 4):
        student, teacher = heads(norm_last_layer)
        loss_fn = MIMLoss(K, 0.1, 0.9, centering=centering)
        for _ in range(2):  # the second step uses the centre the first one moved
            student.zero_grad()
            if chunk:
                weights = student.prototypes.weight, teacher.prototypes.weight
                args = student.features(tokens), weights[0], teacher.features(teacher_tokens), weights[1]
                loss = loss_fn.chunked(*args, 0.04, chunk)
            else:
                loss = loss_fn(student(tokens), teacher(teacher_tokens), 0.04)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads, loss_fn.state_dict()))
    (want, want_grads, want_state), (got, got_grads, got_state) = results
    gain = "prototypes.parametrizations.weight.original0"
    assert (gain in want_grads) is not norm_last_layer and set(got_grads) == set(want_grads)
    torch.testing.assert_close(got.double(), want.double(), atol=1e-6, rtol=0)
    for name, grad in want_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(got_grads[name], grad, **EXACT)
    for key, value in want_state.items():  # the centre (fp32 state): moved alike, to fp32 rounding
        assert value.abs().max() > 0
        torch.testing.assert_close(got_state[key], value, atol=1e-6, rtol=1e-5)


def test_distill_repeats_each_images_target_over_its_local_crops():
    """L_distill: B teacher rows, B * V student rows (5 x 3 = 15, chunks of 4 span two images): the
    fp64 loss written out with each image's target repeated, and the plain DistillLoss's centre."""
    b, v = 5, 3
    local, teacher = rand(b, v, D, seed=20), rand(b, D, seed=21)
    w, wt = rand(K, D, seed=22), rand(K, D, seed=23)
    p = F.softmax(teacher @ wt.t() / 0.04, dim=-1).repeat_interleave(v, dim=0)  # a fresh centre is 0
    want, (gx, gw) = value_and_grads(lambda x, w: plain(x.reshape(b * v, D), w, p, 0.1), local, w)
    loss_fn = DistillLoss(K, 0.1, 0.9)
    got, (cx, cw) = value_and_grads(lambda x, w: loss_fn.chunked(x, w, teacher, wt, 0.04, 4), local, w)
    torch.testing.assert_close(got, want, **EXACT)
    torch.testing.assert_close(cx, gx, **EXACT)
    torch.testing.assert_close(cw, gw, **EXACT)
    plain_fn = DistillLoss(K, 0.1, 0.9)
    plain_fn(local @ w.t(), teacher @ wt.t(), 0.04)
    assert plain_fn.targets.center.abs().max() > 0
    torch.testing.assert_close(loss_fn.targets.center, plain_fn.targets.center, atol=1e-6, rtol=1e-5)


def test_centred_targets_are_made_with_the_centre_before_its_update():
    """Backward makes the targets again after the centre has moved: they must use the old one."""
    x, w = rand(6, D, seed=30), rand(K, D, seed=31)
    centring = CenteredTeacherTargets(K, 0.5)
    centring.center.fill_(0.7)
    targets = centring.chunked(x, w, 0.04)
    assert not torch.equal(centring.center, torch.full((1, K), 0.7))  # moved
    torch.testing.assert_close(targets.rows(0, 6), F.softmax((x @ w.t() - 0.7) / 0.04, dim=-1))
    want = 0.5 * 0.7 + 0.5 * (x @ w.t()).mean(0, keepdim=True)
    torch.testing.assert_close(centring.center, want.float())


def test_bf16_autocast_scores_like_the_head_and_keeps_the_parameters_dtypes():
    """Under bf16 autocast the scores are made in bf16 as the head's linear layer makes them, the
    loss in fp32; the gradients come back in the parameters' own dtypes, near the plain ones."""
    x = F.normalize(rand(40, D, seed=40, dtype=torch.float32), dim=-1)
    w = F.normalize(rand(K, D, seed=41, dtype=torch.float32), dim=-1)
    p = F.softmax(rand(40, K, seed=42, dtype=torch.float32) / 0.3, dim=-1)

    def under_autocast(fn):
        def run(x, w):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(x, w)

        return run

    want, (gx, gw) = value_and_grads(
        under_autocast(lambda x, w: cross_entropy_to_targets(F.linear(x, w), p, 0.1)), x, w
    )
    chunked = under_autocast(lambda x, w: prototype_cross_entropy(x, w, GivenTargets(p), 0.1, 16))
    got, (cx, cw) = value_and_grads(chunked, x, w)
    assert got.dtype == torch.float32 and cx.dtype == cw.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # the same bf16 scores, fp32 loss
    torch.testing.assert_close(cx, gx, atol=2e-3, rtol=2e-2)  # bf16 products in backward, on both sides
    torch.testing.assert_close(cw, gw, atol=2e-3, rtol=2e-2)
