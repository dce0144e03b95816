"""The Ray Train job on the shared local Ray instance: two CPU workers (gloo, DDP)."""

import torch
from conftest import REPO, tiny_overrides

from tipslab.jobs.data.pipeline.prepare import ensure_scenes
from tipslab.jobs.train.trainer import build_trainer
from tipslab.models.checkpoint import load_state, load_student
from tipslab.orchestrator.config import load_experiment, to_dict

BASE = REPO / "ablations" / "base" / "tips_tiny.yaml"


def experiment(**extra) -> dict:
    config = to_dict(load_experiment(BASE, tiny_overrides(**extra)))
    ensure_scenes(config)
    return config


def test_two_workers_on_s3_train_report_checkpoint_and_a_rerun_resumes(ray_session, home, s3, tmp_path):
    # Two workers (DDP) with Tag2Text's tag loss, its vocabulary read from a file, on shards and
    # checkpoints on S3. Without MIM (or distillation, or CLIP) no trainable parameter is left without
    # a gradient, which DDP would fail on: tests/models/test_objective.py
    # test_every_student_parameter_gets_a_gradient.
    import json

    import ray

    from tipslab.jobs import storage
    from tipslab.jobs.train.state import REPORTS_FILE, parse_reports
    from tipslab.jobs.train.trace import ROW_TRACE_ENV

    vocab = tmp_path / "tags.txt"
    vocab.write_text("\n".join(["circle", "square", "triangle", "red", "green", "blue", "yellow", "purple", "orange"]))
    config = experiment(
        **{
            "data.root": f"{s3}/scenes",
            "train.num_workers": 2,
            "train.cpus_per_worker": 0.5,
            "train.steps": 2,
            "train.checkpoint_every": 2,
            "train.log_every": 2,
            "loss.tag_weight": 1.0,
            "data.tag_vocab": str(vocab),
        }
    )
    assert config["model"]["num_tags"] == 9  # derived from the vocabulary
    assert storage.is_file(f"{s3}/scenes/train/manifest.json")

    # The trial driver is a Ray task, as in a sweep; the AWS variables set here after ray.init reach
    # it (and from it, the controller and workers) only through its runtime environment.
    reported = tmp_path / "reported.txt"

    class Steps(ray.train.UserCallback):  # in Ray Train's controller: each report's step, to a file
        def after_report(self, run_context, metrics, checkpoint):
            with open(reported, "a") as f:
                f.write(f"{metrics[0]['step']} {metrics[0]['train/loss']}\n")

    @ray.remote(num_cpus=0)
    def fit(exp):
        result = build_trainer(exp, name="on-s3", storage_path=f"{s3}/ray", callbacks=[Steps()]).fit()
        with result.checkpoint.as_directory() as d:
            _, tokenizer, saved = load_student(d)
            uri = storage.to_uri(result.checkpoint.filesystem, result.checkpoint.path)
            return uri, load_state(d), tokenizer.max_len, saved, result.metrics_dataframe, len(result.best_checkpoints)

    on_s3 = fit.options(runtime_env={"env_vars": {**storage.aws_env(), ROW_TRACE_ENV: str(tmp_path)}})
    path, state, _, _, _, _ = ray.get(on_s3.remote(config))
    # the URI the sweep records as the run's checkpoint_uri, which `tipslab eval --run` reads back
    assert path.startswith(f"{s3}/ray/on-s3/") and state["step"] == 2
    assert storage.is_file(storage.join(path, "model.pt"))
    first = reported.read_text().splitlines()
    assert [line.split()[0] for line in first] == ["2"]
    # the same (storage_path, name) with more steps goes on from step 2, on both ranks
    config["train"]["steps"] = 4
    path, state, max_len, saved, history, kept = ray.get(on_s3.remote(config))
    assert state["step"] == 4 and any(name.startswith("checkpoint") for name in storage.list_names(f"{s3}/ray/on-s3"))
    events = [json.loads(line) for f in tmp_path.glob("*.json") for line in f.read_text().splitlines()]
    assert [e["resumed_at"] for e in events] == [2, 2]
    # It reported its checkpoint's step again first (the same metrics, from report.json beside the
    # checkpoint), then its new steps.
    lines = reported.read_text().splitlines()
    assert lines[:2] == [first[0], first[0]] and [line.split()[0] for line in lines] == ["2", "2", "4"]
    # The new checkpoint lists the run's reports, the one reported again not twice.
    reports = parse_reports(storage.read_bytes(storage.join(path, REPORTS_FILE)).decode())
    assert [r["step"] for r in reports] == [2, 4] and reports[0]["train/loss"] == float(first[0].split()[1])

    # What the rerun reported: Ray Train V2 keeps the metrics reported with the retained checkpoints
    assert list(history["step"]) == [2, 4] and kept == 2
    assert {"train/loss", "train/clip", "train/distill", "train/mim", "perf/images_per_s"} <= set(history)
    assert history["train/loss"].notna().all() and (history["perf/images_per_s"] > 0).all()
    assert (0 < history["train/tag"]).all() and (history["train/tag"] < 100).all()
    assert (0 <= history["perf/data_wait_frac"]).all() and (history["perf/data_wait_frac"] <= 1).all()
    # rows read over both ranks, counted once a views batch is trained on: at least the 8 a step each
    # trained on, less the views batch of 8 a rank may be in the middle of; none bad
    seen = list(history["data/rows_seen"])
    assert 16 * (2 - 1) <= seen[0] < seen[1] and seen[1] >= 16 * (4 - 1) and (history["data/bad_rows"] == 0).all()
    # the checkpoint: the whole state, the config it ran and its tokenizer, the teacher moved towards
    # the student but is not the student
    assert saved == config and max_len == config["model"]["max_text_len"]
    assert state["teacher"] is not None and set(state["objective"]) == {"distill.targets.center", "mim.targets.center"}
    assert not torch.equal(state["teacher"]["vision.pos_embed"], state["student"]["vision.pos_embed"])
