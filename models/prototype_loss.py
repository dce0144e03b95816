"""The prototype cross-entropy of L_distill and L_MIM, computed a chunk of rows at a time.

Both terms average over rows H(p, softmax(s / T_s)) = -sum_k p_k log_softmax(s / T_s)_k, where s are
the student's scores over K prototypes and p the teacher's (centred, sharpened) probabilities. At
B/14 scale K is 32k-64k and L_MIM has a row per masked patch of every image, so the plain form
(models/distill.py, cross_entropy_to_targets) holds several fp32 [rows, K] tensors at once: the
scores, their log-softmax kept for backward, the targets, and in backward as many gradients.

`prototype_cross_entropy` takes the student's features before the last (prototype) layer and that
layer's weight instead of the scores, and walks the rows in chunks: the scores of a chunk are made,
used and dropped; forward keeps only each row's log-sum-exp, and backward makes the chunk's scores
again (one more [chunk, D] x [D, K] product) to form the gradient (softmax(s / T) sum(p) - p) / T.
The targets are made per chunk too (`CenteredTargets`, from the teacher's features and weight), or
sliced from a whole tensor where they need every row at once (`GivenTargets`: Sinkhorn-Knopp, whose
balancing spans the batch). Peak memory is then O(chunk x K) plus the [rows, D] features, instead of
O(rows x K). `loss.chunk_rows` (models/config.py) switches it on; values and gradients match the
plain form (tests/models/test_prototype_loss.py).

Precision follows the plain path: under autocast the scores are made in the autocast dtype (as the
head's linear layer makes them), then the softmax and the loss are computed in fp32 (fp64 for fp64
inputs); the gradient goes back through the prototype layer in the scores' dtype.
"""

import torch
import torch.nn.functional as F


class GivenTargets:
    """Teacher probabilities [M, K] already made; student row i takes teacher row i // repeat
    (L_distill: V local crops per image share their image's target)."""

    def __init__(self, probs: torch.Tensor, repeat: int = 1):
        self.probs, self.repeat = probs, repeat

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        if self.repeat == 1:
            return self.probs[lo:hi]
        return self.probs[torch.arange(lo, hi, device=self.probs.device) // self.repeat]


class CenteredTargets:
    """softmax((x W^T - center) / T) of the teacher's features x [M, D] and prototype weight W [K, D],
    made a chunk at a time (DINO's centring; `center` must be a copy of the centre before its update,
    as backward makes the targets again after the update)."""

    def __init__(
        self, features: torch.Tensor, weight: torch.Tensor, center: torch.Tensor, temperature: float, repeat: int = 1
    ):
        self.features, self.weight, self.center = features.detach(), weight.detach(), center
        self.temperature, self.repeat = temperature, repeat
        self.dtype = scores_dtype(features, weight)

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        if self.repeat == 1:
            x = self.features[lo:hi]
        else:
            x = self.features[torch.arange(lo, hi, device=self.features.device) // self.repeat]
        # softmax((s - center) / T), in place on the chunk's one fresh [rows, K] tensor
        t = scaled_scores(x, self.weight, self.dtype, self.temperature, self.center)
        t.sub_(t.amax(-1, keepdim=True)).exp_()
        return t.div_(t.sum(-1, keepdim=True))


def scores_dtype(features: torch.Tensor, weight: torch.Tensor | None) -> torch.dtype:
    """The dtype the prototype layer makes the scores in: autocast's where it is on, else the inputs'."""
    device = features.device.type
    if weight is not None and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return features.dtype if weight is None else torch.promote_types(features.dtype, weight.dtype)


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for the loss whatever the scores' precision, fp64 kept for fp64 (the exact tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def scores(x: torch.Tensor, weight: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x W^T in `dtype` (x itself when there is no weight: x are the scores), autocast off: the
    casts are explicit, so forward and backward (which runs outside autocast) make the same scores."""
    if weight is None:
        return x
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(dtype), weight.to(dtype))


def scaled_scores(
    x: torch.Tensor, weight: torch.Tensor | None, dtype: torch.dtype, temp: float, center: torch.Tensor | None = None
) -> torch.Tensor:
    """(x W^T - center) / temp in the loss's precision, as a fresh tensor made in place: the chunk's
    scores are its largest tensor, so no step makes a second one."""
    s = scores(x, weight, dtype).to(math_dtype(dtype), copy=weight is None)  # never x itself
    if center is not None:
        s.sub_(center)
    return s.div_(temp)


class _ChunkedPrototypeCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, targets, student_temp: float, chunk_rows: int):
        dtype = scores_dtype(features, weight)
        md = math_dtype(dtype)
        n = features.shape[0]
        lse = torch.empty(n, dtype=md, device=features.device)
        total = torch.zeros((), dtype=md, device=features.device)
        w = None if weight is None else weight.to(dtype)
        for lo in range(0, n, chunk_rows):
            hi = min(lo + chunk_rows, n)
            s = scaled_scores(features[lo:hi], w, dtype, student_temp)
            lse[lo:hi] = torch.logsumexp(s, dim=-1)
            total += s.neg_().add_(lse[lo:hi, None]).mul_(targets.rows(lo, hi)).sum()  # sum p (lse - s)
        ctx.save_for_backward(features, weight, lse)
        ctx.targets, ctx.student_temp, ctx.chunk_rows, ctx.dtype = targets, student_temp, chunk_rows, dtype
        return total / max(n, 1)

    @staticmethod
    def backward(ctx, grad_out):
        features, weight, lse = ctx.saved_tensors
        dtype, temp = ctx.dtype, ctx.student_temp
        md = math_dtype(dtype)
        n = features.shape[0]
        want_x, want_w = ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(features) if want_x else None
        grad_w = torch.zeros(weight.shape, dtype=md, device=weight.device) if want_w else None
        w = None if weight is None else weight.to(dtype)
        scale = grad_out.to(md) / (max(n, 1) * temp)
        for lo in range(0, n, ctx.chunk_rows):
            hi = min(lo + ctx.chunk_rows, n)
            x = features[lo:hi]
            s = scaled_scores(x, w, dtype, temp)
            p = ctx.targets.rows(lo, hi)
            # d/ds of sum_k p_k (lse - s_k) = softmax(s) sum_k p_k - p; d/d(scores) divides by T.
            g = s.sub_(lse[lo:hi, None]).exp_().mul_(p.sum(-1, keepdim=True)).sub_(p).mul_(scale).to(dtype)
            if weight is None:
                if want_x:
                    grad_x[lo:hi] = g
                continue
            with torch.autocast(features.device.type, enabled=False):
                if want_x:
                    grad_x[lo:hi] = g @ w
                if want_w:
                    grad_w += (g.t() @ x.to(dtype)).to(md)
        return grad_x, None if grad_w is None else grad_w.to(weight.dtype), None, None, None


@torch.compiler.disable  # a Python loop over chunks: eager, whatever compiles around it
def prototype_cross_entropy(
    features: torch.Tensor, weight: torch.Tensor | None, targets, student_temp: float, chunk_rows: int
) -> torch.Tensor:
    """Mean over the N rows of H(targets, softmax(features W^T / student_temp)), `chunk_rows` rows at
    a time. features [N, D] (with weight None: the scores [N, K] themselves), weight [K, D] the
    prototype layer's (its weight-normalised weight, gradients flow to what makes it), targets a
    `GivenTargets` or `CenteredTargets` of N rows (never differentiated). N = 0 gives 0."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    return _ChunkedPrototypeCrossEntropy.apply(features, weight, targets, student_temp, chunk_rows)
