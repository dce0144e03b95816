"""Shared fixtures: one real local Ray instance for the whole test session, a home folder per test."""

import io
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tipslab.orchestrator.runtime import quiet_environment

quiet_environment()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance with this machine's CPUs, started once, shut down at the end."""
    import ray

    from tipslab.orchestrator.runtime import ensure_ray

    resources = ensure_ray()
    yield resources
    ray.shutdown()


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A sqlite MLflow store with MLflow's tables and nothing in them: MLflow takes about a second to
    make one (its schema migrations), which every test starting from an empty home paid again."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def home(tmp_path, monkeypatch, empty_store):
    """A fresh TIPSLAB_HOME (shards, Ray storage, sqlite MLflow store) for one test; its store
    exists, empty, as after a first command. The store's making, and commands without one, are
    tested where TIPSLAB_HOME is a folder of the test's own."""
    monkeypatch.setenv("TIPSLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "home").mkdir()
    shutil.copyfile(empty_store, tmp_path / "home" / "mlflow.db")
    return tmp_path / "home"


def tiny_overrides(**extra) -> list[str]:
    """Command-line overrides that shrink the tiny experiment to a few seconds of training."""
    base = {
        "train.steps": 6,
        "train.log_every": 2,
        "train.warmup_steps": 2,
        "data.batch_size": 8,
        "data.scenes_train": 48,
        "data.scenes_probe": 24,
        "eval.seg_probe_epochs": 5,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and idle OpenMP spinning slows a busy
    2-core machine many times over; model tests run on one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on loopback for the whole session: its URL, with the standard AWS
    variables pointing at it for the tests that use it (see `s3`)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """A fresh bucket `tipslab-test` on the loopback S3 server; returns its URI prefix
    (`s3://tipslab-test`). Endpoint and credentials come from the standard AWS variables and the
    AWS credentials file only, as they would on a cluster; they are fake. Ray tasks get the
    endpoint and the file's path, never the keys (jobs/storage.py): the session's Ray instance
    started before these variables were set, as a cluster's nodes do."""
    import urllib.request

    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{s3_endpoint}/moto-api/reset", method="POST")).read()
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = testing-key-id\naws_secret_access_key = testing-secret-key\n"
    )
    for name, value in {
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="tipslab-test")
    return "s3://tipslab-test"


def spoil_rows(shard_file, spoiled: dict[int, tuple[str, object]]) -> None:
    """Rewrite one Parquet shard file with rows made bad: {row: (column, value)}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(shard_file)
    records = table.to_pylist()
    for i, (column, value) in spoiled.items():
        records[i][column] = value
    pq.write_table(pa.Table.from_pylist(records, schema=table.schema), shard_file, row_group_size=len(records))


# Encoded images for the data tests.
def jpeg(w=64, h=48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height and whose pixel data is a few bytes: a decode
    would need width*height*3 bytes of memory, so a check that decodes fails loudly."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def shards_without(folder, *columns: str) -> None:
    """Rewrite the shard set at `folder` (made by write_shards) without `columns`, its manifest's
    hashes updated: a set made elsewhere that lacks them."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    for entry in manifest["shards"]:
        path = Path(folder) / entry["file"]
        pq.write_table(pq.read_table(path).drop_columns(list(columns)), path)
        entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["content_hash"] = hashlib.sha256("".join(e["sha256"] for e in manifest["shards"]).encode()).hexdigest()
    (Path(folder) / "manifest.json").write_text(json.dumps(manifest))


def driver_dies(tracker) -> None:
    """What a sweep driver killed on this host leaves in MLflow: its lease, no longer renewed, naming
    a process that is gone (a child that has exited); its RUNNING runs stay as they are."""
    import json
    import subprocess
    import sys

    from tipslab.orchestrator.lease import LEASE

    tracker.lease.stop()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    held = json.loads(tracker.client.get_run(tracker.parent_id).data.tags[LEASE])
    tracker.client.set_tag(tracker.parent_id, LEASE, json.dumps({**held, "pid": gone.pid}))
