import json

from conftest import driver_dies

from tipslab.orchestrator.tracking import redact, scrub


def test_passwords_inside_uris_are_never_logged():
    assert redact("postgresql://mlflow:s3cret@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact("s3://bucket/path") == "s3://bucket/path"
    assert redact(0.5) == "0.5"


def test_credentials_of_the_environment_are_masked_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-token-123456")
    monkeypatch.setenv("TIPSLAB_HOME", "/not/a/secret")
    assert redact("key=wJalrXUtnFEMI/K7MDENG; token ray-token-123456") == "key=***; token ***"
    assert redact("/not/a/secret/x") == "/not/a/secret/x"
    config = {
        "data": {"root": "s3://u:pw@host/b"},
        "model": {"tokenizer": "hash"},
        "env_vars": {"A": "b"},
        "aws_secret_access_key": "x",
        "note": "wJalrXUtnFEMI/K7MDENG",
    }
    assert scrub(config) == {"data": {"root": "s3://u:***@host/b"}, "model": {"tokenizer": "hash"}, "note": "***"}


def test_the_tokenizer_file_is_an_input_of_the_trial_run(tmp_path, home):
    """A SentencePiece tokenizer is recorded by its sha256 (tag and input dataset); the hash tokenizer is not."""
    import hashlib

    from mlflow.tracking import MlflowClient

    from tipslab.orchestrator.spec import Plan, ResourceSpec, Trial
    from tipslab.orchestrator.tracking import SweepTracker

    tokenizer = tmp_path / "tokenizer.model"
    tokenizer.write_bytes(b"a serialized SentencePiece model")
    data = {"source": "scenes", "root": str(tmp_path), "train_split": "train"}
    with_file = {"data": data, "model": {"tokenizer": str(tokenizer), "vocab_size": 32000}}
    hashed = {"data": data, "model": {"tokenizer": "hash", "vocab_size": 4096}}
    trials = [Trial("sp", 0, with_file, "h-sp"), Trial("hash", 0, hashed, "h-hash")]
    plan = Plan(tmp_path / "s.yaml", {"name": "tok", "title": "", "variants": {}}, "full", ResourceSpec(), trials)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, plan)
    sp, plain = (MlflowClient(uri).get_run(tracker.start_trial(t)) for t in trials)
    digest = hashlib.sha256(b"a serialized SentencePiece model").hexdigest()
    assert sp.data.tags["tipslab.tokenizer_sha256"] == digest
    (given,) = sp.inputs.dataset_inputs
    assert (given.dataset.name, given.dataset.digest) == ("tokenizer", digest[:36])
    assert given.dataset.source == str(tokenizer)
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "tokenizer")]
    assert "tipslab.tokenizer_sha256" not in plain.data.tags and not plain.inputs.dataset_inputs


def test_resume_keeps_finished_runs_of_the_same_hash_and_closes_orphans(tmp_path, home):
    """The resume bookkeeping on a real sqlite store, as a dead driver leaves it."""
    from mlflow.tracking import MlflowClient

    from tipslab.orchestrator.spec import Plan, ResourceSpec, Trial
    from tipslab.orchestrator.tracking import SweepTracker

    config = {"data": {"source": "scenes", "root": str(tmp_path), "train_split": "train"}, "x": 1}
    trials = [Trial("a", 0, config, "hash-a0"), Trial("a", 1, config, "hash-a1"), Trial("b", 0, config, "hash-b0")]
    plan = Plan(
        tmp_path / "s.yaml",
        {"name": "exp", "title": "", "variants": {"a": {}, "b": {}}},
        "smoke",
        ResourceSpec(),
        trials,
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = SweepTracker(uri, plan)
    for trial in trials:
        first.start_trial(trial)
    first.finish_trial("a-seed0", "FINISHED")
    first.finish_trial("b-seed0", "FINISHED")  # finished, but the spec has changed b since
    for step, loss in ((2, 5.0), (4, 4.0), (2, 7.0)):  # a step reported again (a restart) is logged once
        first.log_metrics("a-seed1", {"train/loss": loss, "step": step}, step)
    driver_dies(first)  # a-seed1 and the parent stay RUNNING

    changed = Trial("b", 0, config, "hash-b0-new")
    resumed = SweepTracker(
        uri, Plan(plan.path, plan.spec, "smoke", ResourceSpec(), [trials[0], trials[1], changed]), resume=True
    )
    assert (resumed.sweep_id, resumed.parent_id) == (first.sweep_id, first.parent_id)
    assert [resumed.is_done(t) for t in (trials[0], trials[1], changed)] == [True, False, False]
    client = MlflowClient(uri)
    assert [client.get_run(r).info.status for r in resumed.closed] == ["KILLED"]
    assert client.get_run(resumed.closed[0]).info.run_name == "a-seed1"
    assert client.get_run(first.parent_id).info.status == "RUNNING"
    # The orphan's trial starts again in the same Ray Train run folder (same sweep, same config hash):
    # it goes on in its run, open again; the changed row gets a new run.
    orphan = client.get_run(resumed.closed[0])
    folder = f"exp-a-seed1-{first.sweep_id}-hash-a1"
    assert orphan.data.tags["tipslab.train_run"] == folder
    # Its latest checkpoint (step 8) lists the run's reports: 6 and 8 had waited in the dead
    # driver's memory (the store was away) and never reached MLflow.
    from tipslab.jobs.train.state import REPORTS_FILE, reports_text

    for name, steps in (
        ("checkpoint_2026-12-06_10-00-00.000001", (2, 4)),
        ("checkpoint_2026-12-06_10-00-09.000001", (2, 4, 6, 8)),
    ):
        (home / "ray" / folder / name).mkdir(parents=True)
        reports = [{"train/loss": 10.0 - s, "step": s} for s in steps]
        (home / "ray" / folder / name / REPORTS_FILE).write_text(reports_text(reports))
    assert resumed.start_trial(trials[1]) == orphan.info.run_id
    reopened = client.get_run(orphan.info.run_id)
    assert reopened.info.status == "RUNNING" and "tipslab.closed_by" not in reopened.data.tags
    # It goes on from that checkpoint, reporting its step again first: logged once.
    for step, loss in ((8, 2.5), (10, 1.0)):
        resumed.log_metrics("a-seed1", {"train/loss": loss, "step": step}, step)
    resumed.log_metrics("a-seed1", {"eval/scenes/i2t_r1": 0.5, "step": 10}, 10)  # the evaluation's report
    history = client.get_metric_history(orphan.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(2, 5.0), (4, 4.0), (6, 4.0), (8, 2.0), (10, 1.0)]
    assert client.get_run(orphan.info.run_id).data.metrics["eval/scenes/i2t_r1"] == 0.5
    assert resumed.start_trial(changed) not in {orphan.info.run_id, *first.children.values()}
    # A run whose folder is not the one the trial trains in now (a run of older code, or one a
    # search sample had) is left closed: its history would not continue.
    driver_dies(resumed)
    client.set_tag(orphan.info.run_id, "tipslab.train_run", "exp-a-seed1-3f9a1c")
    again = SweepTracker(uri, Plan(plan.path, plan.spec, "smoke", ResourceSpec(), trials[:2]), resume=True)
    new_run = again.start_trial(trials[1])
    assert new_run != orphan.info.run_id and client.get_run(orphan.info.run_id).info.status == "KILLED"
    # The trial still trains in its folder, from its checkpoint: the new run has the history up to it.
    assert sorted(m.step for m in client.get_metric_history(new_run, "train/loss")) == [2, 4, 6, 8]
    other_size = SweepTracker(uri, Plan(plan.path, plan.spec, "full", ResourceSpec(), trials), resume=True)
    assert other_size.sweep_id != first.sweep_id and other_size.done == {}  # a sweep is (spec, size)


def test_a_sweep_is_its_spec_and_size_in_mlflow_and_table_finds_the_mini_one(tmp_path, home, monkeypatch, capsys):
    """A mini sweep written by the sweep's tracker (no Ray), then a newer smoke one: the size tag
    is on the parent and every trial, and `table --size mini` reads the mini sweep back."""
    from conftest import REPO
    from mlflow.tracking import MlflowClient

    from tipslab.dashboards.store import load_sweep
    from tipslab.dashboards.table import render
    from tipslab.orchestrator.cli import main
    from tipslab.orchestrator.runtime import QUIET_ENV
    from tipslab.orchestrator.spec import load_spec
    from tipslab.orchestrator.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = REPO / "ablations" / "tips_losses.yaml"
    written = {}
    for size in ("mini", "smoke"):
        plan = load_spec(spec, size=size)
        tracker = SweepTracker(uri, plan)
        for trial in plan.trials:
            tracker.start_trial(trial)
            result = {m["key"]: 10.0 + trial.seed for m in plan.spec["metrics"]}
            tracker.log_metrics(trial.name, result, plan.trials[0].config["train"]["steps"])
            tracker.finish_trial(trial.name, "FINISHED", result)
        tracker.finish("FINISHED")
        written[size] = tracker.sweep_id

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tips-losses").experiment_id
    mini_runs = client.search_runs([exp], f"tags.`tipslab.sweep_id` = '{written['mini']}'")
    assert len(mini_runs) == 1 + 9 and {r.data.tags["tipslab.size"] for r in mini_runs} == {"mini"}

    sweep = load_sweep(uri, "tips-losses", size="mini")
    assert sweep.sweep_id == written["mini"] and sweep.spec["size"] == "mini"
    assert {(t.variant, t.seed) for t in sweep.finished()} == {
        (v, s)
        for v in (
            "clip",
            "clip+distill",
            "clip+distill+mim",  # the mini size drops the rows of ours
        )
        for s in (0, 1, 2)
    }
    table = render(sweep)
    assert f"sweep {written['mini']}, mini;" in table and "Normals °" in table and "11.00 ± 1.00 (n=3)" in table
    assert load_sweep(uri, "tips-losses").sweep_id == written["smoke"]  # without --size: the latest

    for key, value in QUIET_ENV.items():  # main() sets these for its process: keep them to this test
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["table", "tips-losses", "--size", "mini"]) == 0
    assert f"sweep {written['mini']}, mini;" in capsys.readouterr().out
    assert main(["table", "tips-losses", "--size", "full"]) == 2
    assert capsys.readouterr().err.strip() == "tipslab: error: no full sweep in experiment 'tips-losses'"


def test_the_probes_protocols_reach_the_trials_results_its_tags_and_the_tables_footnote(tmp_path, home):
    """finish_trial reads the evaluation's eval_results.json: its `protocols` go into the logged
    results and become one tag per metric key, which `tipslab table` footnotes under the columns."""
    import json

    from mlflow.tracking import MlflowClient

    from tipslab.dashboards.store import load_sweep
    from tipslab.dashboards.table import render
    from tipslab.orchestrator.spec import Plan, ResourceSpec, Trial
    from tipslab.orchestrator.tracking import SweepTracker

    seg = {"name": "linear_upsampled", "label_size": 512, "source": "DINOv2"}
    depth = {"name": "scenes_bins", "bins": 256}
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    metrics = {"eval/pascal_voc/seg_miou": 61.0, "eval/scenes/depth_rmse": 1.5}
    (eval_dir / "eval_results.json").write_text(
        json.dumps({**metrics, "protocols": {"pascal_voc/segmentation": seg, "scenes/depth": depth}})
    )
    config = {"data": {"source": "scenes", "root": str(tmp_path), "train_split": "train"}}
    spec = {
        "name": "exp",
        "title": "",
        "variants": {"a": {}},
        "metrics": [
            {"key": "eval/pascal_voc/seg_miou", "header": "mIoU", "goal": "max"},
            {"key": "eval/scenes/depth_rmse", "header": "RMSE", "goal": "min"},
            {"key": "eval/scenes/depth_delta1", "header": "δ1", "goal": "max"},
        ],
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, Plan(tmp_path / "s.yaml", spec, "full", ResourceSpec(), [Trial("a", 0, config, "h")]))
    tracker.start_trial(tracker.plan.trials[0])
    tracker.log_metrics("a-seed0", metrics, 10)
    tracker.finish_trial("a-seed0", "FINISHED", {**metrics, "eval_dir": str(eval_dir)})
    tracker.finish("FINISHED")

    client = MlflowClient(uri)
    run_id = tracker.children["a-seed0"]
    tags = client.get_run(run_id).data.tags
    assert tags["tipslab.protocol.eval/pascal_voc/seg_miou"] == "linear_upsampled: label_size=512, source=DINOv2"
    assert tags["tipslab.protocol.eval/scenes/depth_delta1"] == "scenes_bins: bins=256"  # every metric of the probe
    logged = json.loads(open(client.download_artifacts(run_id, "eval_results.json", str(tmp_path))).read())
    assert logged["protocols"]["pascal_voc/segmentation"] == seg and logged["eval/scenes/depth_rmse"] == 1.5
    table = render(load_sweep(uri, "exp"))
    assert "protocol of mIoU: linear_upsampled: label_size=512, source=DINOv2" in table
    assert "protocol of RMSE, δ1: scenes_bins: bins=256" in table


def test_a_bench_run_on_a_fresh_store_writes_its_artifact_in_the_stores_folder(home, monkeypatch):
    # `tipslab bench step` alone on a fresh home failed: its experiment's artifacts are under
    # `mlflow-artifacts:/`, which only tracking.py's import taught MLflow to resolve in the store's folder.
    from mlflow.store.artifact import artifact_repository_registry as registry
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    from tipslab.orchestrator.runtime import tracking_uri
    from tipslab.orchestrator.tracking_outside import log_bench

    repos = dict(registry._artifact_repository_registry._registry)
    monkeypatch.setattr(registry._artifact_repository_registry, "_registry", repos)
    repos["mlflow-artifacts"] = MlflowArtifactsRepository  # as in a process that never imported tracking.py
    result = {"device_kind": "cpu", "device": "test", "images_per_s": 12.5}
    run_id = log_bench(tracking_uri(), "step", "tiny", result, {"images_per_s": 12.5}, {"batch_size": 2})
    [artifact] = list((home / "mlartifacts").glob(f"*/{run_id}/artifacts/bench.json"))
    assert json.loads(artifact.read_text())["images_per_s"] == 12.5
