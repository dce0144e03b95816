"""The one masking step (jobs/redact.py): URI passwords, credential variables by value, values a
spec took from `${oc.env:...}`, and the config keys that carry them to other processes."""

import pytest
from omegaconf import OmegaConf

from tipslab.jobs import redact as r


@pytest.fixture(autouse=True)
def forget(monkeypatch):
    monkeypatch.setattr(r, "_remembered", set())


def test_uri_passwords_are_masked_in_any_scheme():
    assert r.mask_uri("http://alice:pa55word@mlflow:5000") == "http://alice:***@mlflow:5000"
    assert r.mask_uri("ray://u:p@head:10001 and s3://bucket/key") == "ray://u:***@head:10001 and s3://bucket/key"
    assert r.mask_uri("https://:tok3n@host/x") == "https://:***@host/x"
    assert r.mask_uri("http://mlflow:5000/path@x") == "http://mlflow:5000/path@x"  # no userinfo


def test_credential_variables_are_told_by_name_and_by_family():
    for name in (
        "WANDB_API_KEY",
        "GITHUB_TOKEN",
        "DB_PASSWORD",
        "DB_PWD",
        "AWS_SESSION_TOKEN",
        "AWS_NEW_THING",
        "HF_AUTH",
    ):
        assert r.is_credential_variable(name), name
    for name in (
        "AWS_REGION",
        "AWS_ENDPOINT_URL_S3",
        "AWS_SHARED_CREDENTIALS_FILE",
        "RAY_AUTH_MODE",
        "HOME",
        "PATH",
        "PWD",
        "OLDPWD",
    ):
        assert not r.is_credential_variable(name), name


def test_values_of_the_environment_are_masked_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-0123456789abcdef")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:hunter2x@mlflow.example")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # too plain to be a secret: never masked
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    text = "eval/wandb-0123456789abcdef/i2t key=wJalrXUtnFEMI/K7MDENG pw hunter2x; tokenizer false"
    assert r.redact(text) == "eval/***/i2t key=*** pw ***; tokenizer false"
    assert r.redact(0.25) == "0.25"
    assert r.redact_name("eval/wandb-0123456789abcdef/i2t_r1") == "eval/masked/i2t_r1"  # an MLflow metric name


def test_remembered_values_and_the_keys_that_carry_them(monkeypatch):
    monkeypatch.setenv("TIPSLAB_ODD", "s3cr3tvalue123")
    config = {"eval": {"dataset": "s3cr3tvalue123", "probes": ["retrieval"]}, "data": {"root": "/data"}, "n": 3}
    assert r.secret_keys(config) == []  # an oddly named variable is no credential by its name
    r.remember("s3cr3tvalue123", "1", "true", None)  # plain values are never remembered
    assert r._remembered == {"s3cr3tvalue123"}
    assert r.secret_keys(config) == ["eval.dataset"]
    # Another process (a worker) gets the keys, never the values, and remembers them itself.
    monkeypatch.setattr(r, "_remembered", set())
    r.remember_keys(config, ["eval.dataset"])
    assert r.scrub({"eval/s3cr3tvalue123/i2t_r1": 1.0, "note": ["x s3cr3tvalue123"], "api_key": "z"}) == {
        "eval/***/i2t_r1": 1.0,
        "note": ["x ***"],
    }


def test_oc_env_interpolation_is_remembered_whatever_the_name(monkeypatch):
    from tipslab.orchestrator import config  # noqa: F401  (registers the resolver)

    monkeypatch.setenv("TIPSLAB_ODD", "s3cr3tvalue123")
    monkeypatch.delenv("TIPSLAB_UNSET", raising=False)
    cfg = OmegaConf.create(
        {
            "title": "run ${oc.env:TIPSLAB_ODD}",
            "d": "${oc.env:TIPSLAB_UNSET,plain-default}",
            "n": "${oc.env:X_NONE,null}",
        }
    )
    assert OmegaConf.to_container(cfg, resolve=True) == {
        "title": "run s3cr3tvalue123",
        "d": "plain-default",
        "n": None,
    }
    assert r.redact("title: run s3cr3tvalue123, plain-default") == "title: run ***, plain-default"
    with pytest.raises(Exception, match="TIPSLAB_UNSET"):
        OmegaConf.to_container(OmegaConf.create({"x": "${oc.env:TIPSLAB_UNSET}"}), resolve=True)


def test_the_cls_token_choices_are_settings_not_credentials():
    from tipslab.jobs.redact import scrub, secret_key

    config = {"eval": {"retrieval_token": "auto", "knn_token": "cls_web", "zero_shot_token": "cls_web"}}
    assert scrub(config) == config  # a checkpoint's config keeps them
    assert secret_key("eval.knn_token") is False
    assert secret_key("auth_token") and secret_key("RAY_AUTH_TOKEN") and not secret_key("model.tokenizer")
