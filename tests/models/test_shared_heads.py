"""model.shared_heads: one prototype head for L_distill and L_MIM (iBOT's option), in the student
and its teacher; separate heads (DINOv2's default) otherwise."""

import pytest
import torch

from tipslab.models.config import LossConfig, ModelConfig, TIPSConfig
from tipslab.models.errors import ConfigError
from tipslab.models.objective import TIPSObjective
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

K = 32
GRID = 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(shared: bool, **loss):
    torch.manual_seed(0)
    cfg = TIPSConfig(
        model=ModelConfig(size="tiny", head_hidden=64, head_bottleneck=16, head_prototypes=K, shared_heads=shared),
        loss=LossConfig(**loss),
    )
    return cfg, TIPSStudent(cfg)


def batch(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "global_crop": torch.rand(b, 3, 112, 112, generator=g),
        "local_crops": torch.rand(b, 2, 3, 28, 28, generator=g),
        "masks": torch.stack([torch.randperm(GRID * GRID, generator=g) < 48 for _ in range(b)]),
        "web_tokens": torch.randint(1, 4096, (b, 6), generator=g),
        "synthetic_tokens": torch.randint(1, 4096, (b, 6), generator=g),
    }


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_shared_heads_are_one_parameter_set():
    _, separate = make(False)
    _, shared = make(True)
    assert shared.head is shared.distill_head is shared.mim_head
    assert separate.head is None and separate.distill_head is not separate.mim_head
    assert count(separate) - count(shared) == count(separate.mim_head)  # one head fewer
    names = [n for n, _ in shared.named_parameters()]
    assert any(n.startswith("head.") for n in names)
    assert not any(n.startswith(("distill_head.", "mim_head.")) for n in names)
    assert {k.split(".")[0] for k in shared.state_dict()} == {"vision", "text", "head"}
    # DINO's norm_last_layer holds for the one head: its gain is fixed at 1
    fixed = {n for n, p in shared.named_parameters() if not p.requires_grad}
    assert fixed == {"head.prototypes.parametrizations.weight.original0"}
    assert torch.allclose(shared.head.prototypes.weight.norm(dim=1), torch.ones(K))


def test_both_terms_train_the_one_head():
    cfg, student = make(True)
    teacher = EMATeacher(student)
    b = batch()

    def head_grad(use_distill: float, use_mim: float) -> torch.Tensor:
        student.zero_grad()
        out = student(b)
        t_out = teacher(b["global_crop"], b["masks"], cfg.loss.distill_cls)
        _, terms = TIPSObjective(cfg)(out, t_out, 0.04)  # a fresh centre each time
        (use_distill * terms["distill"] + use_mim * terms["mim"]).backward()
        return student.head.mlp[0].weight.grad.clone()

    from_distill, from_mim = head_grad(1.0, 0.0), head_grad(0.0, 2.0)
    assert from_distill.abs().sum() > 0 and from_mim.abs().sum() > 0
    torch.testing.assert_close(head_grad(1.0, 2.0), from_distill + from_mim)


def test_the_teacher_copies_one_head_and_moves_it_once():
    _, student = make(True)
    teacher = EMATeacher(student)
    assert teacher.head is teacher.distill_head is teacher.mim_head
    assert teacher.head is not student.head
    assert count(teacher) == count(student.vision) + count(student.head)
    assert {k.split(".")[0] for k in teacher.state_dict()} == {"vision", "head"}
    teacher_before = {n: p.clone() for n, p in teacher.head.named_parameters()}
    with torch.no_grad():
        for p in student.head.parameters():
            p.add_(0.5)
    m = 0.6
    teacher.update(student, m)
    for n, p in teacher.head.named_parameters():  # once: m t + (1-m) s, not m (m t + (1-m) s) + ...
        want = m * teacher_before[n] + (1 - m) * dict(student.head.named_parameters())[n]
        torch.testing.assert_close(p, want, msg=n)
    x = batch()
    out = teacher(x["global_crop"], x["masks"], "cls_web")
    with torch.no_grad():
        clean = teacher.vision(x["global_crop"])
        torch.testing.assert_close(out["cls_logits"], teacher.head(clean["cls_web"]))
        torch.testing.assert_close(out["masked_patch_logits"], teacher.head(clean["patch_tokens"][x["masks"]]))


@pytest.mark.parametrize("distill,mim", [(1.0, 0.0), (0.0, 2.0)])
def test_with_one_term_off_there_is_nothing_to_share(distill, mim):
    _, student = make(True, distill_weight=distill, mim_weight=mim)
    assert student.head is None
    assert (student.distill_head is None) == (distill == 0) and (student.mim_head is None) == (mim == 0)


def test_shared_heads_need_one_prototype_count():
    with pytest.raises(ConfigError, match=r"^model\.shared_heads: .*65536.*32768"):
        ModelConfig(shared_heads=True)  # the defaults: 65,536 for L_distill, 32k for L_MIM
    assert ModelConfig(shared_heads=True, distill_prototypes=32768).prototypes() == (32768, 32768)
    assert ModelConfig(shared_heads=True, head_prototypes=64).prototypes() == (64, 64)
