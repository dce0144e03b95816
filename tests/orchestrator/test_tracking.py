from tipslab.orchestrator.tracking import redact


def test_passwords_inside_uris_are_never_logged():
    assert redact("postgresql://mlflow:s3cret@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact("s3://bucket/path") == "s3://bucket/path"
    assert redact(0.5) == "0.5"
