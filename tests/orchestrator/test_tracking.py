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
    config = {"data": {"root": "s3://u:pw@host/b"}, "model": {"tokenizer": "hash"},
              "env_vars": {"A": "b"}, "aws_secret_access_key": "x", "note": "wJalrXUtnFEMI/K7MDENG"}
    assert scrub(config) == {"data": {"root": "s3://u:***@host/b"}, "model": {"tokenizer": "hash"}, "note": "***"}


def test_resume_keeps_finished_runs_of_the_same_hash_and_closes_orphans(tmp_path, home):
    """The resume bookkeeping on a real sqlite store, as a dead driver leaves it."""
    from mlflow.tracking import MlflowClient

    from tipslab.orchestrator.spec import Plan, ResourceSpec, Trial
    from tipslab.orchestrator.tracking import SweepTracker

    config = {"data": {"source": "scenes", "root": str(tmp_path), "train_split": "train"}, "x": 1}
    trials = [Trial("a", 0, config, "hash-a0"), Trial("a", 1, config, "hash-a1"), Trial("b", 0, config, "hash-b0")]
    plan = Plan(tmp_path / "s.yaml", {"name": "exp", "title": "", "variants": {"a": {}, "b": {}}}, "smoke",
                ResourceSpec(), trials)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = SweepTracker(uri, plan)
    for trial in trials:
        first.start_trial(trial)
    first.finish_trial("a-seed0", "FINISHED")
    first.finish_trial("b-seed0", "FINISHED")  # finished, but the spec has changed b since
    # the driver dies here: a-seed1 and the parent stay RUNNING

    changed = Trial("b", 0, config, "hash-b0-new")
    resumed = SweepTracker(uri, Plan(plan.path, plan.spec, "smoke", ResourceSpec(), [trials[0], trials[1], changed]),
                           resume=True)
    assert (resumed.sweep_id, resumed.parent_id) == (first.sweep_id, first.parent_id)
    assert [resumed.is_done(t) for t in (trials[0], trials[1], changed)] == [True, False, False]
    client = MlflowClient(uri)
    assert [client.get_run(r).info.status for r in resumed.closed] == ["KILLED"]
    assert client.get_run(resumed.closed[0]).info.run_name == "a-seed1"
    assert client.get_run(first.parent_id).info.status == "RUNNING"
    other_size = SweepTracker(uri, Plan(plan.path, plan.spec, "full", ResourceSpec(), trials), resume=True)
    assert other_size.sweep_id != first.sweep_id and other_size.done == {}  # a sweep is (spec, size)
