"""A full or read-only disk under the run's storage: one message naming the path and the sizes.

Real small file systems (tmpfs mounts, which need root: skipped otherwise), no Ray."""

import errno
import os
import subprocess
import time

import pytest
from conftest import REPO

from tipslab.orchestrator.errors import UserError
from tipslab.orchestrator.faults import check_storage, disk_fault, fault, size, storage_guard

MiB = 1024**2


def mounted(path, *options):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system."""
    path = mounted(tmp_path / "small", "size=1m")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def read_only_disk(tmp_path):
    path = mounted(tmp_path / "ro", "size=1m", "ro")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_too_little_space_before_the_run_names_the_path_and_the_sizes(small_disk):
    storage = str(small_disk / "ray")
    with pytest.raises(UserError) as err:
        check_storage(storage, 10 * MiB, "the checkpoints of 2 trial(s) (about 5.0 MiB each)")
    assert str(err.value) == (
        f"the run storage {storage} is full (1.0 MiB free, about 10.0 MiB needed for the checkpoints of 2 "
        "trial(s) (about 5.0 MiB each)): free space there, or set TIPSLAB_HOME to a larger disk"
    )
    check_storage(storage, 512 * 1024)  # what fits passes, and leaves nothing behind
    assert os.listdir(storage) == []


def test_read_only_storage_is_named_before_the_run(read_only_disk):
    with pytest.raises(UserError) as err:
        check_storage(str(read_only_disk), 0)
    assert str(err.value) == (
        f"the run storage {read_only_disk} is read-only (Read-only file system): set TIPSLAB_HOME to a writable folder"
    )


def test_a_disk_that_fills_during_the_run_is_named_not_a_traceback(small_disk):
    storage = str(small_disk)
    with pytest.raises(UserError) as err, storage_guard(storage):
        with open(small_disk / "checkpoint.pt", "wb") as f:
            f.write(b"\0" * 2 * MiB)
    assert str(err.value) == (
        f"the run storage {storage} is full (0 B free): free space there, or set TIPSLAB_HOME to a larger disk"
    )
    # Tune's symptom when its state file was cut short: an EOFError that names nothing; the disk tells.
    with pytest.raises(UserError, match=f"the run storage {storage} is full"), storage_guard(storage):
        raise EOFError("Ran out of input")
    os.remove(small_disk / "checkpoint.pt")
    with pytest.raises(EOFError), storage_guard(storage, low_bytes=512 * 1024):  # room left: not the disk's
        raise EOFError("Ran out of input")


def test_a_trial_that_failed_for_want_of_disk_is_recognised_through_rays_wrapping():
    wrapped = RuntimeError("TrainingFailedError: worker 0: OSError: [Errno 28] No space left on device: '/x/ckpt'")
    assert fault(wrapped) == "full" and fault(OSError(errno.EROFS, "Read-only file system")) == "readonly"
    assert str(disk_fault(wrapped, "s3://bucket/runs")) == (
        "the run storage s3://bucket/runs is full: free space there, or set TIPSLAB_HOME to a larger disk"
    )
    assert disk_fault(RuntimeError("loss is nan"), "/tmp") is None
    assert [size(0), size(1536), size(3 * 1024**3)] == ["0 B", "1.5 KiB", "3.0 GiB"]


def test_the_checkpoint_estimate_is_what_a_checkpoint_holds(one_torch_thread, tmp_path):
    """Student, teacher and AdamW's two moments of the trainable parameters, float32: within 2% of
    such a file's size (a variant with frozen parts: its text tower, without a contrastive term)."""
    import torch

    from tipslab.models.checkpoint import tips_config
    from tipslab.models.teacher import EMATeacher
    from tipslab.models.tips import TIPSStudent
    from tipslab.orchestrator.config import load_experiment, to_dict
    from tipslab.orchestrator.spec import Trial
    from tipslab.orchestrator.sweep import checkpoint_bytes, storage_need

    for overrides in ([], ["loss.clip_weight=0"]):
        config = to_dict(load_experiment(REPO / "ablations" / "base" / "tips_tiny.yaml", overrides))
        student = TIPSStudent(tips_config(config))
        trainable = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable)
        for p in trainable:
            p.grad = torch.zeros_like(p)
        optimizer.step()  # its moments exist
        state = {"student": student.state_dict(), "teacher": EMATeacher(student).state_dict()}
        torch.save({**state, "optimizer": optimizer.state_dict()}, tmp_path / "model.pt")
        assert checkpoint_bytes(config) == pytest.approx((tmp_path / "model.pt").stat().st_size, rel=0.02)
    keep = config["train"]["checkpoints_to_keep"]
    need, what = storage_need([Trial("a", 0, config, "h"), Trial("a", 1, config, "h")])
    assert need == 2 * (keep + 1) * checkpoint_bytes(config)
    assert what == f"the checkpoints of 2 trial(s) (about {size(need / 2)} each)"


def test_a_ray_cluster_that_is_gone_is_named_not_retried_for_minutes():
    import socket

    from tipslab.orchestrator.runtime import check_reachable

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"no Ray cluster answers at 127.0.0.1:{port} \(Connection refused, tried"):
        check_reachable(f"127.0.0.1:{port}", within_s=1)
    assert time.monotonic() - start < 10
    with socket.socket() as s:  # one that listens passes at once
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_reachable(f"127.0.0.1:{s.getsockname()[1]}")
    check_reachable("auto")
    check_reachable("ray://head:10001")  # Ray Client addresses are Ray's to reach


def test_s3_credentials_refused_are_one_line_naming_the_file_and_where_credentials_come_from(tmp_path):
    """moto's S3 server with its authentication on (a separate process: the session's moto server
    accepts any key): fake keys are refused as by AWS."""
    import socket
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "moto did not start"
                time.sleep(0.3)
        aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_REGION": "us-east-1"}
        aws.update(AWS_ACCESS_KEY_ID="AKIANOTAKEY000000000", AWS_SECRET_ACCESS_KEY="not-a-secret-at-all")
        env = {**os.environ, **aws, "TIPSLAB_HOME": str(tmp_path)}
        done = subprocess.run(
            [sys.executable, "-m", "tipslab.orchestrator.cli", "data", "check", "s3://team-bucket/train"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.terminate()
        server.wait()
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot read shard manifest s3://team-bucket/train/manifest.json" in done.stderr
    assert "S3 refused the credentials" in done.stderr and "'team-bucket'" in done.stderr
    assert "not-a-secret-at-all" not in done.stderr + done.stdout
