"""The evaluation job: the metric registry, and every probe on a tiny checkpoint's features from
Ray Data, with probe-train and probe-test kept apart."""

import json
import os

import numpy as np
import pytest
import torch

from tipslab.jobs.data.scenes.generate import generate_scenes, scene_row
from tipslab.jobs.data.shards.format import write_shards
from tipslab.jobs.eval import evaluate as evaluation
from tipslab.jobs.eval.evalsets import scenes as scene_reader
from tipslab.jobs.eval.evaluate import evaluate_checkpoint, metric_goal, metric_keys, retrieval_token
from tipslab.jobs.eval.probes import PROBES
from tipslab.jobs.eval.probes.features import Towers, feature_rows, in_process

SCENE_KEYS = {
    "eval/scenes/" + m
    for m in (
        "zero_shot_top1",
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        *(f"web_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)),
        "seg_miou",
        "depth_rmse",
        "depth_absrel",
        "depth_delta1",
        "normals_mean_angle",
        "knn_top1",
    )
}


def test_metric_registry():
    assert metric_keys({"dataset": "scenes"}) == SCENE_KEYS
    keys = metric_keys(
        {
            "dataset": "scenes",
            "probes": ["retrieval", "segmentation", "depth"],
            "datasets": {"pascal_voc": "/voc", "nyuv2": "/nyu", "flickr30k": "/f", "imagenet": "/in"},
        }
    )
    assert {
        "eval/pascal_voc/seg_miou",
        "eval/nyuv2/depth_rmse",
        "eval/flickr30k/i2t_r1",
        "eval/scenes/t2i_r10",
        "eval/scenes/depth_delta1",
    } <= keys
    assert not any(k.startswith("eval/imagenet/") for k in keys)  # its probes (knn, zero_shot) are off
    assert "eval/scenes/knn_top1" not in keys and "eval/pascal_voc/depth_rmse" not in keys
    assert metric_keys({"dataset": "", "datasets": {"coco": "/c"}}) == {
        f"eval/coco/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)
    }
    assert {metric_goal(k) for k in SCENE_KEYS} == {"max", "min"}
    assert metric_goal("eval/scenes/depth_rmse") == "min" and metric_goal("eval/scenes/seg_miou") == "max"
    with pytest.raises(ValueError, match="eval.probes: unknown probes \\['linear'\\]"):
        metric_keys({"probes": ["linear"]})
    with pytest.raises(ValueError, match="eval.datasets.voc: unknown dataset 'voc'"):
        metric_keys({"datasets": {"voc": "/voc"}})


def test_retrieval_token():
    exp = {
        "loss": {"caption_mode": "dual_cls"},
        "eval": {"retrieval_token": "auto", "retrieval_caption": "synthetic_caption"},
    }
    assert retrieval_token(exp) == "cls_synthetic"
    exp["loss"]["caption_mode"] = "web"
    assert retrieval_token(exp) == "cls_web"
    exp["eval"]["retrieval_token"] = "cls_synthetic"
    assert retrieval_token(exp) == "cls_synthetic"


def test_shards_without_normals_skip_that_probe_with_a_reason(tmp_path):
    for split, seeds in (("probe_train", range(3)), ("probe_test", range(3, 5))):
        rows = [
            {k: v for k, v in scene_row(s, split, size=28).items() if k not in ("normals", "instances")} for s in seeds
        ]
        write_shards(rows, str(tmp_path / split), source="test")
    es = scene_reader.read(str(tmp_path), 28)
    assert es.train.normals is None and es.test.segmentation.shape == (2, 28, 28)
    assert evaluation.why_not("normals", es) == "the shards of probe_train, probe_test have no 'normals' column"
    assert evaluation.why_not("segmentation", es) is None and evaluation.why_not("zero_shot", es) is None


def tiny_checkpoint(home, size=56, n_train=10, n_test=6):
    """A randomly initialised tiny model (its features are what they are; the test checks plumbing
    and bookkeeping, the probe tests check the numbers) and the scenes' probe splits."""
    from tipslab.models.checkpoint import save_checkpoint, tips_config
    from tipslab.models.tips import TIPSStudent
    from tipslab.models.tokenizer import build_tokenizer
    from tipslab.orchestrator.config import load_experiment, to_dict

    exp = to_dict(
        load_experiment(
            "ablations/base/tips_tiny.yaml",
            [f"model.image_size={size}", "eval.batch_size=8", "eval.seg_probe_epochs=5", "eval.depth_probe_epochs=5"],
        )
    )
    root = exp["data"]["root"]
    generate_scenes(os.path.join(root, "probe_train"), n_train, split="probe_train", size=size)
    generate_scenes(os.path.join(root, "probe_test"), n_test, split="probe_test", size=size)
    torch.manual_seed(0)
    student = TIPSStudent(tips_config(exp))
    folder = str(home / "checkpoint")
    save_checkpoint(
        folder, {"student": student.state_dict(), "config": exp, "tokenizer": build_tokenizer(exp["model"]).state()}
    )
    return folder, exp


@pytest.mark.usefixtures("one_torch_thread")
def test_every_probe_runs_on_ray_data_features_and_fits_on_probe_train_only(ray_session, home, monkeypatch):
    """~10 s on an idle 2-core machine: one Ray Data actor pool, 16 images, 6 captions."""
    checkpoint, exp = tiny_checkpoint(home)
    fitted = []  # the keys of every split a probe was fit on
    for name, module in PROBES.items():
        if module.TRAINED:
            real = module.fit
            monkeypatch.setattr(
                module,
                "fit",
                lambda train, ctx, real=real, name=name: (
                    fitted.append((name, list(train.split.keys))) or real(train, ctx)
                ),
            )
    out = home / "eval"
    metrics = evaluate_checkpoint(checkpoint, exp, str(out))

    assert set(metrics) == SCENE_KEYS | {"perf/eval_seconds"}
    assert all(np.isfinite(v) for v in metrics.values())
    assert 0 <= metrics["eval/scenes/seg_miou"] <= 100 and metrics["eval/scenes/depth_rmse"] > 0
    train_keys = [f"probe_train-{s:08d}" for s in range(10_000_000, 10_000_010)]
    assert sorted(name for name, _ in fitted) == ["depth", "knn", "normals", "segmentation"]
    for name, keys in fitted:
        assert keys == train_keys, name  # all of probe-train, in order, and nothing else
    written = json.loads((out / "eval_results.json").read_text())
    protocols = written.pop("protocols")
    assert written == pytest.approx(metrics)
    # the scenes keep the cheap dense protocols by default; every probe says how it scored
    assert (
        protocols["scenes/segmentation"]["name"] == "patch_grid" and protocols["scenes/depth"]["name"] == "scenes_bins"
    )
    assert protocols["scenes/segmentation"]["label_size"] == 56 and protocols["scenes/knn"]["k"] == 20
    assert set(protocols) == {f"scenes/{p}" for p in PROBES}
    npz = np.load(out / "features.npz")
    assert npz["images"].shape == (4, 56, 56, 3) and npz["images"].dtype == np.uint8
    assert npz["patch_tokens"].shape == (4, 16, 64) and npz["keys"][0] == "probe_test-20000000"

    # Inside a Ray task that holds CPUs (a trial's evaluation) on a cluster without GPUs, the task
    # computes the features itself, batch by batch (here 3 and 1): the pool's patch tokens.
    test = evaluation.load_data("scenes", None, evaluation.experiment(exp)).test
    rows = feature_rows(test.keys[:4], test.images[:4], [])
    parts = in_process(rows, 3, Towers(checkpoint, 1, 56, patches=True))
    assert [len(p["index"]) for p in parts] == [3, 1]
    np.testing.assert_allclose(np.concatenate([p["patch_tokens"] for p in parts]), npz["patch_tokens"], atol=1e-5)


def test_a_task_holding_cpus_computes_its_features_itself_unless_the_cluster_has_gpus():
    from tipslab.jobs.eval.probes.features import pool_for

    assert pool_for(held=2, gpus=0, cpus=8) == (None, 0, 2)  # the trial's evaluation: its own threads
    assert pool_for(held=0, gpus=0, cpus=8) == ({"num_cpus": 4}, 1, 4)  # the driver: one actor, 4 CPUs at most
    assert pool_for(held=0, gpus=0, cpus=1) == ({"num_cpus": 1}, 1, 1)
    assert pool_for(held=2, gpus=4, cpus=8) == ({"num_gpus": 1, "num_cpus": 0}, 4, 1)  # on the caller's CPUs
    assert pool_for(held=0, gpus=4, cpus=8) == ({"num_gpus": 1, "num_cpus": 1}, 4, 1)


def test_probe_test_rows_inside_probe_train_are_refused(home):
    checkpoint, exp = tiny_checkpoint(home, size=28, n_train=3, n_test=2)
    root = exp["data"]["root"]
    generate_scenes(os.path.join(root, "probe_test"), 2, split="probe_train", size=28)  # the same scenes
    with pytest.raises(ValueError, match="share keys"):
        evaluate_checkpoint(checkpoint, exp)


def test_checkpoint_on_s3_is_loaded_from_a_local_copy(s3, home):
    import pyarrow.fs as pafs

    from tipslab.jobs import storage
    from tipslab.jobs.eval.probes.features import local_checkpoint
    from tipslab.models.checkpoint import load_student

    checkpoint, _ = tiny_checkpoint(home, size=28, n_train=1, n_test=1)
    fs, path = storage.resolve(f"{s3}/runs/checkpoint")
    pafs.copy_files(checkpoint, path, destination_filesystem=fs)
    with local_checkpoint(f"{s3}/runs/checkpoint") as folder:
        assert folder != checkpoint and os.path.isfile(os.path.join(folder, "model.pt"))
        student, _, config = load_student(folder)
    assert config["model"]["image_size"] == 28
    with local_checkpoint(checkpoint) as folder:
        assert folder == checkpoint
