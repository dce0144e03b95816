"""L_clip: symmetric softmax InfoNCE, and its equality across ranks with the single-process loss."""

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tipslab.models.contrastive import clip_loss

WORLD = 2
BATCH = 8  # global batch; each rank holds BATCH // WORLD rows
DIM = 16


def reference_clip(image: np.ndarray, text: np.ndarray, temperature: float) -> np.ndarray:
    """Per-row symmetric InfoNCE in float64, written out with explicit log-sum-exp: [B]."""
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    sim = image @ text.T / temperature
    rows = []
    for i in range(sim.shape[0]):
        i2t = -sim[i, i] + math.log(sum(math.exp(v) for v in sim[i, :]))
        t2i = -sim[i, i] + math.log(sum(math.exp(v) for v in sim[:, i]))
        rows.append(0.5 * (i2t + t2i))
    return np.array(rows)


def data(seed=0, b=BATCH, d=DIM):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


def test_matches_hand_computed_symmetric_infonce():
    image, text = data()
    for t in (0.07, 0.5, 1.0):
        got = clip_loss(image, text, torch.tensor(t))
        want = reference_clip(image.double().numpy(), text.double().numpy(), t).mean()
        assert got.dtype == torch.float32
        assert abs(got.item() - want) < 1e-4 * max(1.0, want)


def test_symmetric_and_scale_invariant():
    image, text = data(1)
    t = torch.tensor(0.1)
    base = clip_loss(image, text, t)
    torch.testing.assert_close(clip_loss(text, image, t), base)
    torch.testing.assert_close(clip_loss(5.0 * image, 0.1 * text, t), base)


def test_aligned_embeddings_give_near_zero_loss_and_shuffled_a_large_one():
    eye = torch.eye(BATCH, DIM)  # orthonormal, perfectly matched pairs
    t = torch.tensor(0.01)
    aligned = clip_loss(eye, eye, t)
    assert 0 <= aligned.item() < 1e-6
    shuffled = clip_loss(eye, eye.roll(1, dims=0), t)
    # every positive has similarity 0 while one negative has 1: loss ~ 1 / T = 100
    assert shuffled.item() == pytest.approx(100.0, rel=1e-3)
    # uniform (all-equal) embeddings give log(B)
    same = torch.ones(BATCH, DIM)
    assert clip_loss(same, same, torch.tensor(0.07)).item() == pytest.approx(math.log(BATCH), rel=1e-5)


def test_gradient_reaches_embeddings_and_temperature():
    image, text = data(2)
    image.requires_grad_(True)
    text.requires_grad_(True)
    log_t = torch.tensor(math.log(0.1), requires_grad=True)
    clip_loss(image, text, log_t.exp()).backward()
    for g in (image.grad, text.grad, log_t.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        image, text = data(seed=5)
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        image = image[rows].clone().requires_grad_(True)
        text = text[rows].clone().requires_grad_(True)
        temperature = torch.tensor(0.2, requires_grad=True)
        loss = clip_loss(image, text, temperature)
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "image": image.grad, "text": text.grad, "temperature": temperature.grad},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_the_single_process_loss_and_gradients(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    image, text = data(seed=5)
    image.requires_grad_(True)
    text.requires_grad_(True)
    temperature = torch.tensor(0.2, requires_grad=True)
    single = clip_loss(image, text, temperature)
    single.backward()

    # Each rank scores its own rows against the whole global batch: its loss is the mean of the
    # single-process per-row losses over its rows, and the ranks' mean is the single-process loss.
    per_row = reference_clip(image.detach().double().numpy(), text.detach().double().numpy(), 0.2)
    half = BATCH // WORLD
    for r, out in enumerate(ranks):
        assert out["loss"].item() == pytest.approx(per_row[r * half : (r + 1) * half].mean(), rel=1e-5)
    assert np.mean([o["loss"].item() for o in ranks]) == pytest.approx(single.item(), rel=1e-6)
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # the halves really differ

    # Gradients. all_gather's backward sums the gradient of every rank's loss into each rank's own
    # rows, so rank r holds d(sum_s loss_s)/d(rows_r) = WORLD * d(single loss)/d(rows_r). DDP then
    # averages parameter gradients over ranks (divides by WORLD): the model gets exactly the
    # single-process gradient.
    for key, single_grad in (("image", image.grad), ("text", text.grad)):
        dist_grad = torch.cat([o[key] for o in ranks])
        torch.testing.assert_close(dist_grad / WORLD, single_grad, atol=1e-6, rtol=1e-5)
    # The temperature is replicated, not gathered: each rank's gradient is that of its own loss, and
    # their DDP average is the single-process gradient.
    mean_t_grad = torch.stack([o["temperature"] for o in ranks]).mean()
    torch.testing.assert_close(mean_t_grad, temperature.grad, atol=1e-6, rtol=1e-5)
