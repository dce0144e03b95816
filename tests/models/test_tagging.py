"""L_tag: the Tag2Text tagging head (queries cross-attending to image tokens) and the asymmetric loss."""

import math

import pytest
import torch

from tipslab.models.config import LossConfig, ModelConfig, TIPSConfig
from tipslab.models.objective import TIPSObjective
from tipslab.models.tagging import TagHead, asymmetric_loss
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH, TAGS = 16, 7


def head(seed=0, **kw) -> TagHead:
    torch.manual_seed(seed)
    return TagHead(WIDTH, TAGS, **kw)


def tokens(b=3, n=10, seed=1) -> torch.Tensor:
    return torch.randn(b, n, WIDTH, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_structure():
    h = head()
    assert h(tokens()).shape == (3, TAGS)
    assert len(h.layers) == 2 and h.layers[0].heads == 4  # Tag2Text: 2 layers, 4 heads
    assert h.queries.shape == (TAGS, WIDTH) and h.class_weight.shape == (TAGS, WIDTH)
    assert h.class_bias.shape == (TAGS,)
    assert len(TagHead(WIDTH, TAGS, layers=3, heads=2).layers) == 3
    with pytest.raises(ValueError, match="tag_heads"):
        TagHead(WIDTH, TAGS, heads=3)
    with pytest.raises(ValueError, match="num_tags"):
        TagHead(WIDTH, 0)


def test_no_self_attention_and_per_class_outputs_keep_tags_independent():
    h, x = head(), tokens()
    with torch.no_grad():
        before = h(x)
        h.queries[2].add_(1.0)  # another query: only its own tag's score may change
        after_query = h(x)
        h.class_weight[5].mul_(-1.0)  # another class's output weights: only its score
        after_weight = h(x)
    changed = (after_query - before).abs().amax(0) > 1e-6
    assert changed.tolist() == [i == 2 for i in range(TAGS)]
    changed = (after_weight - after_query).abs().amax(0) > 1e-6
    assert changed.tolist() == [i == 5 for i in range(TAGS)]


def test_scores_depend_on_the_image_tokens_but_not_their_order():
    h, x = head(), tokens()
    with torch.no_grad():
        base = h(x)
        torch.testing.assert_close(h(x[:, torch.randperm(x.shape[1])]), base, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(h(x + 0.5 * tokens(seed=2)), base, atol=1e-3)
        # each image is scored on its own tokens
        torch.testing.assert_close(h(x[1:2]), base[1:2], atol=1e-5, rtol=1e-5)


def test_gradient_reaches_every_head_parameter_and_the_image_tokens():
    h, x = head(), tokens().requires_grad_(True)
    targets = torch.zeros(3, TAGS)
    targets[0, 1] = targets[2, 4] = 1.0
    asymmetric_loss(h(x), targets).backward()
    for name, p in list(h.named_parameters()) + [("tokens", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_asymmetric_loss_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.0, -5.0], [-3.0, 0.5, 1.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]])

    def positive(x):  # γ+ = 0: plain cross-entropy
        return -math.log(sigmoid(x))

    def negative(x):  # shifted probability p_m = max(p - 0.05, 0), focused by p_m^7
        pm = max(sigmoid(x) - 0.05, 0.0)
        return -(pm**7) * math.log(1 - pm)

    rows = [
        positive(2.0) + negative(-1.0) + negative(0.0) + negative(-5.0),
        negative(-3.0) + positive(0.5) + negative(1.0) + positive(3.0),
    ]
    got = asymmetric_loss(logits, targets)
    assert got.item() == pytest.approx(sum(rows) / 2, rel=1e-6)  # summed over tags, mean over images
    # the numbers behind it: an easy negative (p < clip) costs exactly nothing; a hard one little
    assert negative(-5.0) == 0.0 and negative(-3.0) == 0.0
    assert 0 < negative(0.0) < 1e-2 * positive(0.0)


def test_asymmetric_loss_gradient_treats_the_focusing_weight_as_a_constant():
    x = torch.tensor([[0.7]], requires_grad=True)
    asymmetric_loss(x, torch.zeros(1, 1)).backward()
    p = sigmoid(0.7)
    w = (p - 0.05) ** 7
    # d/dx of -w log(1 - p + 0.05), w held fixed (as the reference implementation does)
    assert x.grad.item() == pytest.approx(w * p * (1 - p) / (1 - p + 0.05), rel=1e-5)


def make(tag_weight, num_tags=5, **loss):
    torch.manual_seed(0)
    cfg = TIPSConfig(
        model=ModelConfig(size="tiny", head_hidden=32, head_bottleneck=16, head_prototypes=24, num_tags=num_tags),
        loss=LossConfig(tag_weight=tag_weight, **loss),
    )
    return cfg, TIPSStudent(cfg), TIPSObjective(cfg)


def batch(b=3, num_tags=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    masks = torch.stack([torch.randperm(64, generator=g) < 48 for _ in range(b)])  # 75%, as the pipeline masks
    return {
        "global_crop": torch.rand(b, 3, 112, 112, generator=g),
        "local_crops": torch.rand(b, 2, 3, 28, 28, generator=g),
        "masks": masks,
        "web_tokens": torch.randint(1, 4096, (b, 6), generator=g),
        "synthetic_tokens": torch.randint(1, 4096, (b, 6), generator=g),
        "tags": (torch.rand(b, num_tags, generator=g) < 0.4).float(),
    }


def test_tag_weight_adds_gamma_times_the_tag_loss_on_the_clean_views_tokens():
    cfg, student, objective = make(0.5)
    data = batch()
    teacher = EMATeacher(student)
    out = student(data)
    assert out["tag_logits"].shape == (3, 5) and out["tag_targets"] is data["tags"]
    with torch.no_grad():  # the head sees [CLS_1, CLS_2, patches] of the contrastive (clean) view
        view = student.vision(data["global_crop"])
        image = torch.cat([view["cls_web"][:, None], view["cls_synthetic"][:, None], view["patch_tokens"]], 1)
        torch.testing.assert_close(out["tag_logits"], student.tag_head(image))
    total, terms = objective(out, teacher(data["global_crop"], data["masks"], "cls_web"), 0.04)
    torch.testing.assert_close(terms["tag"], asymmetric_loss(out["tag_logits"], data["tags"]))
    torch.testing.assert_close(total, terms["clip"] + terms["distill"] + 2.0 * terms["mim"] + 0.5 * terms["tag"])
    total.backward()
    unused = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert not hasattr(teacher, "tag_head")  # the teacher has no tagging head


def test_loss_settings_reach_the_tag_term():
    cfg, student, objective = make(1.0, distill_weight=0.0, mim_weight=0.0, tag_gamma_neg=2.0, tag_clip=0.0)
    out = student(batch())
    _, terms = objective(out, {}, 0.04)
    torch.testing.assert_close(terms["tag"], asymmetric_loss(out["tag_logits"], out["tag_targets"], 2.0, 0.0, 0.0))


def test_weight_zero_builds_no_head_and_computes_nothing():
    cfg, student, objective = make(0.0)
    assert student.tag_head is None
    assert not any(n.startswith("tag_head.") for n, _ in student.named_parameters())
    out = student(batch())  # tags in the batch are ignored
    assert "tag_logits" not in out and "tag_targets" not in out
    data = batch()
    del data["tags"]  # and need not be there
    _, terms = objective(student(data), EMATeacher(student)(data["global_crop"], data["masks"], "cls_web"), 0.04)
    assert "tag" not in terms


def test_tagging_errors_name_what_to_set():
    with pytest.raises(ValueError, match="model.num_tags"):
        make(0.5, num_tags=0)
    _, student, _ = make(0.5)
    data = batch()
    del data["tags"]
    with pytest.raises(ValueError, match="tags"):
        student(data)
