"""The EMA teacher: momentum update, frozen, always in eval mode, only the heads that are in use."""

import pytest
import torch

from tipslab.models.config import LossConfig, ModelConfig, TIPSConfig
from tipslab.models.teacher import TEACHER_PARTS, EMATeacher
from tipslab.models.tips import TIPSStudent

GRID = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_student(**loss) -> TIPSStudent:
    torch.manual_seed(0)
    return TIPSStudent(
        TIPSConfig(
            model=ModelConfig(size="tiny", head_hidden=256, head_bottleneck=64, head_prototypes=32),
            loss=LossConfig(**loss),
        )
    )


def perturb(student: TIPSStudent, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def part_params(module: torch.nn.Module, parts=TEACHER_PARTS) -> dict:
    out = {}
    for name in parts:
        part = getattr(module, name)
        if part is not None:
            out.update({f"{name}.{k}": v for k, v in part.named_parameters()})
    return out


def test_teacher_starts_as_a_copy_of_the_students_image_tower_and_heads():
    student = make_student()
    teacher = EMATeacher(student)
    mine, theirs = part_params(teacher), part_params(student)
    assert set(mine) == set(theirs) and len(mine) > 0
    assert any(k.startswith("distill_head.") for k in mine) and any(k.startswith("mim_head.") for k in mine)
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
        assert mine[k].data_ptr() != theirs[k].data_ptr(), k  # a copy, not shared storage
    # the text tower is not part of the teacher
    assert not hasattr(teacher, "text")
    assert not any("log_temperature" in k for k, _ in teacher.named_parameters())


def test_update_is_an_ema_of_every_parameter():
    student = make_student()
    teacher = EMATeacher(student)
    perturb(teacher, seed=2)  # teacher != student, so the mix is visible
    before = {k: v.clone() for k, v in part_params(teacher).items()}
    perturb(student, seed=3)
    m = 0.7
    teacher.update(student, m)
    after, theirs = part_params(teacher), part_params(student)
    for k, t in before.items():
        torch.testing.assert_close(after[k], m * t + (1 - m) * theirs[k], msg=k)
        assert not torch.equal(after[k], t), k


def test_update_with_momentum_one_keeps_and_zero_copies():
    student = make_student()
    teacher = EMATeacher(student)
    perturb(student)
    before = {k: v.clone() for k, v in part_params(teacher).items()}
    teacher.update(student, 1.0)
    for k, v in part_params(teacher).items():
        assert torch.equal(v, before[k]), k
    teacher.update(student, 0.0)
    theirs = part_params(student)
    for k, v in part_params(teacher).items():
        assert torch.equal(v, theirs[k]), k


def test_student_changes_do_not_leak_into_the_teacher_without_update():
    student = make_student()
    teacher = EMATeacher(student)
    before = {k: v.clone() for k, v in part_params(teacher).items()}
    perturb(student)
    for k, v in part_params(teacher).items():
        assert torch.equal(v, before[k]), k


def test_teacher_is_frozen_and_stays_in_eval_mode():
    student = make_student()
    student.train()
    teacher = EMATeacher(student)
    params = list(teacher.parameters())
    assert params and not any(p.requires_grad for p in params)
    fixed = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert fixed == {f"{h}.prototypes.parametrizations.weight.original0" for h in ("distill_head", "mim_head")}
    assert all(p.requires_grad for n, p in student.named_parameters() if n not in fixed)  # the student is untouched
    for mode_call in (lambda: teacher.train(), lambda: teacher.train(True), lambda: teacher.eval()):
        assert mode_call() is teacher
        assert not any(m.training for m in teacher.modules())
    x = torch.rand(2, 3, 112, 112)
    masks = torch.zeros(2, GRID * GRID, dtype=torch.bool)
    masks[:, :48] = True
    out = teacher(x, masks, "cls_web")
    assert not any(v.requires_grad for v in out.values())


def test_forward_scores_clean_cls_and_the_masked_patches():
    student = make_student()
    teacher = EMATeacher(student)
    x = torch.rand(2, 3, 112, 112)
    # Masks as the pipeline makes them: the loss's ratio (3 of 4 here) of each row, anywhere.
    g = torch.Generator().manual_seed(3)
    masks = torch.stack([torch.randperm(GRID * GRID, generator=g) < 48 for _ in range(2)])
    out = teacher(x, masks, "cls_synthetic")
    assert set(out) == {"cls_logits", "masked_patch_logits"}
    assert out["cls_logits"].shape == (2, 32)
    assert out["masked_patch_logits"].shape == (96, 32)
    with torch.no_grad():
        clean = teacher.vision(x)  # the teacher sees the clean image; masks only pick patches
        torch.testing.assert_close(out["cls_logits"], teacher.distill_head(clean["cls_synthetic"]))
        torch.testing.assert_close(out["masked_patch_logits"], teacher.mim_head(clean["patch_tokens"][masks]))
        other = teacher(x, masks, "cls_web")["cls_logits"]
    assert not torch.allclose(other, out["cls_logits"], atol=1e-5)
    # no masks: no MIM scores
    assert "masked_patch_logits" not in teacher(x, None, "cls_web")


@pytest.mark.parametrize("distill,mim", [(0.0, 2.0), (1.0, 0.0)])
def test_heads_absent_when_their_weight_is_zero(distill, mim):
    student = make_student(distill_weight=distill, mim_weight=mim)
    teacher = EMATeacher(student)
    assert (teacher.distill_head is None) == (distill == 0)
    assert (teacher.mim_head is None) == (mim == 0)
    x = torch.rand(1, 3, 112, 112)
    masks = torch.ones(1, GRID * GRID, dtype=torch.bool)
    out = teacher(x, masks, "cls_web")
    assert ("cls_logits" in out) == (distill > 0)
    assert ("masked_patch_logits" in out) == (mim > 0)
    # update still covers exactly the parts that exist
    perturb(student)
    teacher.update(student, 0.0)
    theirs = part_params(student)
    for k, v in part_params(teacher).items():
        assert torch.equal(v, theirs[k]), k
