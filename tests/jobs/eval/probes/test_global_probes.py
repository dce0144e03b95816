"""KNN, zero-shot and retrieval: exact answers on features that encode the label, chance on noise."""

import numpy as np
import pytest
import torch
from probe_data import context, features, one_hot, split

from tipslab.jobs.eval.evalsets import EvalSet
from tipslab.jobs.eval.probes import knn, retrieval, web_retrieval, zero_shot
from tipslab.jobs.eval.registry import metric_goal

rng = np.random.default_rng(0)
CLASSES = 5


def labelled(n_train=1000, n_test=1000, encode=True, dim=32):
    """Image labels 1..CLASSES (0 is the scenes' background, never an image class)."""
    ytr, yte = rng.integers(1, CLASSES + 1, n_train), rng.integers(1, CLASSES + 1, n_test)
    if encode:
        xtr = np.pad(one_hot(ytr, CLASSES + 1), ((0, 0), (0, dim - CLASSES - 1))) + 0.1 * rng.normal(
            size=(n_train, dim)
        )
        xte = np.pad(one_hot(yte, CLASSES + 1), ((0, 0), (0, dim - CLASSES - 1))) + 0.1 * rng.normal(size=(n_test, dim))
    else:
        xtr, xte = rng.normal(size=(n_train, dim)), rng.normal(size=(n_test, dim))
    train, test = split(n_train, "train", labels=ytr), split(n_test, "test", labels=yte)
    names = [None] + [f"class{i}" for i in range(1, CLASSES + 1)]
    data = EvalSet("toy", train, test, class_names=names)
    return data, features(train, cls_web=xtr), features(test, cls_web=xte)


def test_knn_is_exact_on_label_features_and_chance_on_noise():
    data, train, test = labelled()
    ctx = context(data, train, test)
    assert knn.score(knn.fit(train, ctx), test, ctx) == {"knn_top1": 100.0}
    data, train, test = labelled(encode=False)
    ctx = context(data, train, test)
    # chance is 20%; 1,000 test images give a standard deviation of 1.3 points: 6 points is > 4 sd
    assert knn.score(knn.fit(train, ctx), test, ctx)["knn_top1"] == pytest.approx(20, abs=6)


def test_knn_votes_are_temperature_weighted():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, 0.6]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # one very close neighbour outvotes two farther ones at a low temperature, not at a high one
    assert knn.knn_predict(train, labels, query, k=3, temperature=0.01, num_classes=2).item() == 0
    assert knn.knn_predict(train, labels, query, k=3, temperature=10.0, num_classes=2).item() == 1


def test_zero_shot_is_exact_on_label_features_and_chance_on_noise():
    data, _, test = labelled()
    templates = 4
    # the text of class c (label c + 1) under each template: that class's axis plus template noise
    prompts = torch.as_tensor(np.stack([one_hot(np.full(templates, c + 1), CLASSES + 1) for c in range(CLASSES)]))
    prompts = torch.nn.functional.pad(prompts, (0, 32 - CLASSES - 1)) + 0.1 * torch.randn(CLASSES, templates, 32)
    ctx = context(data, None, test, prompts)
    assert zero_shot.score(None, test, ctx) == {"zero_shot_top1": 100.0}
    _, _, noise = labelled(encode=False)
    assert zero_shot.score(None, noise, ctx)["zero_shot_top1"] == pytest.approx(20, abs=6)
    # the protocol counts the templates the prompts were made with, whichever set (it said 0 for a
    # published set, counting the user's own list)
    protocol = zero_shot.protocol(ctx, None)
    assert protocol["templates"] == templates and protocol["template_set"] == ctx.ev.zero_shot_template_set


def test_zero_shot_prompts_are_class_major_and_skip_non_classes():
    assert zero_shot.prompts([None, "cube", "cone"], ["a {}.", "a photo of a {}."]) == [
        "a cube.",
        "a photo of a cube.",
        "a cone.",
        "a photo of a cone.",
    ]


def retrieval_split(n, captions_per_image):
    owner = np.repeat(np.arange(n), captions_per_image)
    s = split(n, "test", captions=[f"caption {i}" for i in range(len(owner))], caption_image=owner)
    return s, owner


@pytest.mark.parametrize("captions_per_image", [1, 5])
def test_retrieval_is_exact_when_captions_encode_their_image(captions_per_image):
    n, dim = 300, 64
    s, owner = retrieval_split(n, captions_per_image)
    image = torch.randn(n, dim)
    text = image[owner] + 0.05 * torch.randn(len(owner), dim)
    out = retrieval.recall_at_k(image, text, owner)
    assert out == {f"{d}_r{k}": 100.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}


def test_web_retrieval_reads_the_web_captions_with_the_web_token():
    """Under dual CLS the main retrieval probe reads CLS_2; web retrieval must still read CLS_1 and
    the web captions, and report under keys of its own."""
    n, dim = 200, 32
    web_token = torch.randn(n, dim)
    s = split(n, "test", web_captions=[f"web {i}" for i in range(n)])
    test = features(s, cls_web=web_token, cls_synthetic=torch.randn(n, dim))
    test.web_text = web_token + 0.05 * torch.randn(n, dim)
    ctx = context(EvalSet("toy", None, s), None, test)
    ctx.tokens = {**ctx.tokens, "retrieval": "cls_synthetic", "web_retrieval": "cls_web"}
    out = web_retrieval.score(None, test, ctx)
    assert out == {f"web_{d}_r{k}": 100.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}
    ctx.tokens["web_retrieval"] = "cls_synthetic"  # the wrong token would be chance
    assert web_retrieval.score(None, test, ctx)["web_i2t_r1"] < 5


def test_retrieval_on_noise_is_chance():
    n, dim = 1000, 64
    _, owner = retrieval_split(n, 1)
    out = retrieval.recall_at_k(torch.randn(n, dim), torch.randn(n, dim), owner)
    # chance R@k is k/n: 0.1%, 0.5%, 1%; the tolerance is about 4 standard deviations of R@10
    for d in ("i2t", "t2i"):
        assert out[f"{d}_r1"] <= 0.6 and out[f"{d}_r10"] == pytest.approx(1.0, abs=1.3)


def test_retrieval_by_hand_and_ties_count_against():
    image = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]]  # captions 2 and 3 swapped
    out = retrieval.recall_at_k(image, text, np.arange(4))
    assert out["i2t_r1"] == 50.0 and out["t2i_r1"] == 50.0 and out["i2t_r5"] == 100.0
    collapsed = retrieval.recall_at_k(torch.ones(4, 3), torch.ones(4, 3), np.arange(4))
    assert collapsed["i2t_r1"] == 0.0 and collapsed["t2i_r1"] == 0.0


def test_metric_goals():
    assert metric_goal("eval/flickr30k/i2t_r1") == "max"
    assert metric_goal("eval/nyuv2/depth_rmse") == "min"
    assert metric_goal("eval/scenes/normals_mean_angle") == "min"
    with pytest.raises(KeyError, match="no probe produces"):
        metric_goal("eval/scenes/loss")


def test_zero_shot_templates_are_the_published_sets_or_the_users_own():
    from tipslab.jobs.config import EvalConfig

    openai = zero_shot.templates(EvalConfig())
    assert len(openai) == 80 and openai[0]("cube") == "a bad photo of a cube."  # CLIP's ImageNet set
    simple = zero_shot.templates(EvalConfig(zero_shot_template_set="simple"))
    assert len(simple) == 7 and zero_shot.prompts(["cone"], simple)[0] == "itap of a cone."
    own = zero_shot.templates(EvalConfig(zero_shot_template_set="own", zero_shot_templates=["a {} here."]))
    assert zero_shot.prompts([None, "cube"], own) == ["a cube here."]
    with pytest.raises(ValueError, match="eval.zero_shot_templates"):
        EvalConfig(zero_shot_template_set="own", zero_shot_templates=["no placeholder"])
    with pytest.raises(ValueError, match="eval.zero_shot_template_set"):
        EvalConfig(zero_shot_template_set="clip")
