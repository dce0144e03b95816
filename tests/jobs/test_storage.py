import os

import pyarrow.fs as pafs
import pytest

from tipslab.jobs import storage


def test_local_paths(tmp_path):
    fs, path = storage.resolve(tmp_path / "a")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "a")
    target = storage.join(tmp_path, "sub", "f.bin")
    assert not storage.exists(target)
    storage.write_bytes(target, b"one")
    storage.write_bytes(target, b"two")  # replaced whole, through a temporary name
    assert storage.read_bytes(target) == b"two" and storage.is_file(target)
    assert storage.is_dir(tmp_path / "sub") and not storage.is_file(tmp_path / "sub")
    assert os.listdir(tmp_path / "sub") == ["f.bin"]  # no temporary file left
    assert storage.list_names(tmp_path / "sub") == ["f.bin"]
    assert storage.list_names(tmp_path / "missing") == []
    assert storage.absolute("rel/x") == os.path.abspath("rel/x")
    storage.delete(target)
    assert not storage.exists(target)


def test_unsupported_uris_are_named():
    with pytest.raises(ValueError, match="gs://b/x.*only local paths and s3://"):
        storage.resolve("gs://b/x")
    with pytest.raises(ValueError, match="names no bucket"):
        storage.resolve("s3://")


def test_s3_settings_come_from_the_aws_environment(monkeypatch):
    for name in storage.AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-in-a-runtime-env")
    assert storage.aws_env() == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:7")  # the S3-specific one wins
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/etc/aws/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "https://user:pw@config.example/x")  # a URL with a password: kept back
    fs = storage.s3_filesystem()
    assert fs.region == "eu-west-3"
    assert "127.0.0.1:7" in repr(fs.__reduce__()) and "127.0.0.1:9" not in repr(fs.__reduce__())
    assert storage.aws_env() == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:7",
        "AWS_REGION": "eu-west-3",
        "AWS_SHARED_CREDENTIALS_FILE": "/etc/aws/credentials",
    }  # the credentials stay on the nodes: Ray logs a runtime_env and shows it on its dashboard


def test_a_checkpoints_filesystem_and_path_make_its_uri(s3):
    assert storage.to_uri(storage.s3_filesystem(), "bucket/run/checkpoint_1") == "s3://bucket/run/checkpoint_1"
    assert storage.to_uri(storage.s3_filesystem(), "s3://bucket/x") == "s3://bucket/x"
    local, path = storage.resolve("/tmp/run/checkpoint_1")
    assert storage.to_uri(local, path) == "/tmp/run/checkpoint_1" and storage.to_uri(None, "rel/x") == "rel/x"


def test_s3_objects(s3):
    uri = storage.join(s3, "x", "f.bin")
    assert uri == f"{s3}/x/f.bin" and storage.absolute(uri + "/") == uri
    assert not storage.exists(uri)
    storage.make_dirs(storage.join(s3, "x"))
    storage.write_bytes(uri, b"payload")
    assert storage.read_bytes(uri) == b"payload" and storage.is_file(uri)
    assert storage.list_names(storage.join(s3, "x")) == ["f.bin"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(s3, "x", "missing"))
    storage.delete(uri)
    assert storage.list_names(storage.join(s3, "x")) == []
