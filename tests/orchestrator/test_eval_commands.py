"""`tipslab eval`: mistakes exit with code 2 and one line; `--run` appends to an MLflow run."""

import json
import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from tipslab.orchestrator.cli import main
from tipslab.orchestrator.runtime import artifact_root, tracking_uri


def tiny_checkpoint(home, size=56):
    from tipslab.jobs.data.scenes.generate import generate_scenes
    from tipslab.models.checkpoint import save_checkpoint, tips_config
    from tipslab.models.tips import TIPSStudent
    from tipslab.models.tokenizer import build_tokenizer
    from tipslab.orchestrator.config import load_experiment, to_dict

    exp = to_dict(
        load_experiment(
            "ablations/base/tips_tiny.yaml",
            [
                f"model.image_size={size}",
                "eval.batch_size=8",
                "eval.seg_probe_epochs=5",
                "eval.depth_probe_epochs=5",
                "eval.probes=[retrieval,segmentation]",
            ],
        )
    )
    for split, n in (("probe_train", 6), ("probe_test", 4)):
        generate_scenes(os.path.join(exp["data"]["root"], split), n, split=split, size=size)
    torch.manual_seed(0)
    folder = str(home / "checkpoint")
    save_checkpoint(
        folder,
        {
            "student": TIPSStudent(tips_config(exp)).state_dict(),
            "config": exp,
            "tokenizer": build_tokenizer(exp["model"]).state(),
        },
    )
    return folder


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval"], "give a CHECKPOINT or --run"),
        (["eval", "/no/such/checkpoint"], "/no/such/checkpoint: no such checkpoint folder"),
        (["eval", "--run", "0123456789abcdef"], "--run 0123456789abcdef: no such run"),
    ],
)
def test_mistakes_exit_2_with_one_line(home, capsys, argv, message):
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # before it, at most MLflow's own store set-up
    assert last.startswith("tipslab: error: ") and message in last


@pytest.mark.parametrize(
    "data,message",
    [
        ("pascal_voc", "give the dataset's folder, as pascal_voc=PATH"),
        ("voc=/x", "unknown dataset 'voc'; known: scenes, imagenet"),
        ("nyuv2=/no/such/folder", "/no/such/folder: no such file or folder"),
    ],
)
def test_bad_data_exits_2(home, capsys, data, message):
    (home / "ckpt").mkdir(parents=True)
    from tipslab.models.checkpoint import save_checkpoint
    from tipslab.orchestrator.config import schema, to_dict

    save_checkpoint(home / "ckpt", {"config": to_dict(schema())})
    assert main(["eval", str(home / "ckpt"), "--data", data]) == 2
    assert message in capsys.readouterr().err


def test_run_gets_the_eval_metrics_and_artifacts_appended(ray_session, home, capsys, one_torch_thread):
    """~10 s on an idle 2-core machine (one Ray Data pass over 10 images)."""
    checkpoint = tiny_checkpoint(home)
    client = MlflowClient(tracking_uri())
    experiment = client.create_experiment("smoke", artifact_location=artifact_root() + "/smoke")
    run = client.create_run(experiment, tags={"tipslab.checkpoint": checkpoint})
    run_id = run.info.run_id
    client.log_param(run_id, "train.steps", "6")
    client.log_dict(run_id, {"eval/scenes/i2t_r1": 1.0, "eval/older/metric": 2.0}, "eval_results.json")
    client.set_terminated(run_id, "FINISHED")

    assert main(["eval", "--run", run_id, "--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    # Each dataset's features and each probe are told on stderr as they end, with the probe's scores.
    told = [line for line in out.err.splitlines() if line.startswith("eval scenes")]
    assert told[0].startswith("eval scenes (1/1): features in ") and len(told) == 3, out.err
    assert told[1].startswith("eval scenes: retrieval in ") and "i2t_r1 " in told[1]
    assert told[2].startswith("eval scenes: segmentation in ") and "seg_miou " in told[2]
    assert report["run_id"] == run_id and report["checkpoint"] == checkpoint
    keys = {f"eval/scenes/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"eval/scenes/seg_miou"}
    assert set(report["metrics"]) == keys

    logged = client.get_run(run_id).data.metrics
    assert keys <= set(logged) and "perf/eval_seconds" in logged
    assert logged["eval/scenes/seg_miou"] == pytest.approx(report["metrics"]["eval/scenes/seg_miou"])
    assert {m.step for m in client.get_metric_history(run_id, "eval/scenes/seg_miou")} == {6}
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"eval_results.json", "features.npz"} <= artifacts
    merged = json.loads(open(client.download_artifacts(run_id, "eval_results.json", str(home))).read())
    assert merged["eval/older/metric"] == 2.0  # what was there stays
    assert merged["protocols"]["scenes/segmentation"]["name"] == "patch_grid"
    tag = client.get_run(run_id).data.tags["tipslab.protocol.eval/scenes/seg_miou"]
    assert tag.startswith("patch_grid: label_size=")
    assert merged["eval/scenes/i2t_r1"] == pytest.approx(report["metrics"]["eval/scenes/i2t_r1"])
