"""Tracking when the store misbehaves, and two drivers on one sweep: on real sqlite stores, without
Ray or training (the sweep's tracker alone), and a fake client for the order of waiting writes."""

import json
import socket
import sqlite3
import threading
import time

import pytest
from conftest import driver_dies
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tipslab.orchestrator import lease, tracking_store
from tipslab.orchestrator.errors import UserError
from tipslab.orchestrator.spec import Plan, ResourceSpec, Trial
from tipslab.orchestrator.tracking import SweepTracker


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (a new one takes MLflow many seconds to make); each test
    writes its own experiment. Returns (uri, file)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return f"sqlite:///{db}", db


def small_plan(tmp_path, name: str, size="smoke") -> Plan:
    config = {"data": {"source": "scenes", "root": str(tmp_path), "train_split": "train"}, "x": 1}
    trials = [Trial("a", 0, config, "hash-a0"), Trial("a", 1, config, "hash-a1")]
    return Plan(tmp_path / "s.yaml", {"name": name, "title": "", "variants": {"a": {}}}, size, ResourceSpec(), trials)


def hold_lock(db, seconds: float) -> threading.Thread:
    """Another connection takes sqlite's exclusive lock on `db` (as a second tipslab writing to the
    same store does) and keeps it for `seconds`."""
    taken = threading.Event()

    def hold():
        con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        con.execute("BEGIN EXCLUSIVE")
        taken.set()
        time.sleep(seconds)
        con.execute("ROLLBACK")
        con.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    taken.wait(10)
    return thread


def steps_of(uri, run_id, key="train/loss"):
    return [(m.step, m.value) for m in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)]


# --------------------------------------------------------------------------- a locked sqlite store
def test_a_write_waits_for_a_short_lock_and_succeeds(tmp_path, home, store):
    uri, db = store
    tracker = SweepTracker(uri, small_plan(tmp_path, "short-lock"))
    run_id = tracker.start_trial(tracker.plan.trials[0])
    holder = hold_lock(db, 2.0)  # shorter than the bound of a write during training
    start = time.monotonic()
    tracker.log_metrics("a-seed0", {"train/loss": 1.5}, 2)
    waited = time.monotonic() - start
    holder.join()
    assert 1.5 < waited < tracking_store.BUFFERED_RETRY_S + 1.0
    assert tracker.client.pending == [] and steps_of(uri, run_id) == [(2, 1.5)]


def test_a_lock_longer_than_the_bound_holds_the_writes_and_the_run_ends_with_every_metric(
    tmp_path, home, store, monkeypatch, capsys
):
    """The issue's case: the store locked for longer than a write may wait, during training. The
    trial goes on; its metrics and its end wait in memory, in order, and are written at the end."""
    monkeypatch.setattr(tracking_store, "RETRY_S", 1.0)
    monkeypatch.setattr(tracking_store, "FLUSH_EVERY", (600.0, 600.0))  # only the end tries again
    uri, db = store
    tracker = SweepTracker(uri, small_plan(tmp_path, "long-lock"))
    first = tracker.start_trial(tracker.plan.trials[0])
    tracker.log_metrics("a-seed0", {"train/loss": 4.0}, 1)
    holder = hold_lock(db, 8.0)
    start = time.monotonic()
    tracker.log_metrics("a-seed0", {"train/loss": 4.0}, 2)
    # Within the bound, not after sqlite's own 20 s wait (MLflow's busy timeout, shortened while buffering).
    assert time.monotonic() - start < tracking_store.BUFFERED_RETRY_S + 1.5
    for step in range(3, 6):
        tracker.log_metrics("a-seed0", {"train/loss": 5.0 - step / 2}, step)
    second = tracker.start_trial(tracker.plan.trials[1])  # a run created while the store is away
    tracker.log_metrics("a-seed1", {"train/loss": 9.0}, 1)
    tracker.finish_trial("a-seed0", "FINISHED")
    assert second.startswith(tracking_store.PENDING) and len(tracker.client.pending) == 9
    err = capsys.readouterr().err
    assert f"the MLflow store {db} is locked by another process" in err and "training goes on" in err
    holder.join()
    assert tracker.finish("FINISHED") is None
    assert tracker.client.pending == []
    client = MlflowClient(uri)
    assert steps_of(uri, first) == [(1, 4.0), (2, 4.0), (3, 3.5), (4, 3.0), (5, 2.5)]
    assert client.get_run(first).info.status == "FINISHED"
    runs = client.search_runs([tracker.experiment_id], "tags.`tipslab.role` = 'trial'")
    late = next(r for r in runs if r.info.run_name == "a-seed1")
    assert steps_of(uri, late.info.run_id) == [(1, 9.0)] and late.data.params["x"] == "1"
    assert client.get_run(tracker.parent_id).info.status == "FINISHED"
    assert "is back after" in capsys.readouterr().err


# `make soak` (a lock held past sqlite's 20 s wait): the message it gives is the one the test above
# checks while training goes on, raised at the start instead.
@pytest.mark.soak
def test_a_store_locked_before_the_sweep_starts_is_one_message_naming_it(tmp_path, home, store, monkeypatch):
    monkeypatch.setattr(tracking_store, "RETRY_S", 1.0)
    uri, db = store
    SweepTracker(uri, small_plan(tmp_path, "locked-start")).finish("FINISHED")  # the store exists
    holder = hold_lock(db, 23.0)
    with pytest.raises(UserError) as err:
        SweepTracker(uri, small_plan(tmp_path, "locked-start", size="mini"))
    holder.join()
    message = str(err.value)
    assert message.startswith(f"the MLflow store {db} is locked by another process (waited 2")
    assert "`tipslab ui`" in message and f"mlflow server --backend-store-uri {uri}" in message


def test_a_corrupt_store_is_one_message_naming_it_also_from_the_cli(tmp_path, home, monkeypatch, capsys):
    from tipslab.orchestrator.cli import main

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database " * 400)
    uri = f"sqlite:///{db}"
    with pytest.raises(UserError, match=f"the MLflow store {db} is not a readable sqlite database"):
        SweepTracker(uri, small_plan(tmp_path, "corrupt"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["table", "corrupt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tipslab: error: the MLflow store {db} is not a readable") and "Traceback" not in err


# --------------------------------------------------------------------------- a tracking server that is away
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_retried_then_named_without_its_password(tmp_path, home, monkeypatch):
    monkeypatch.setattr(tracking_store, "RETRY_S", 2.0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        SweepTracker(f"http://alice:s3cret-pw@127.0.0.1:{port}", small_plan(tmp_path, "unreachable"))
    assert 1.0 < time.monotonic() - start < 10  # retried with back-off, for the bound and not much more
    message = str(err.value)
    assert message.startswith(f"the MLflow tracking server http://alice:***@127.0.0.1:{port} did not answer")
    assert "s3cret-pw" not in message


class FlakyClient:
    """An MlflowClient stand-in whose server can be switched off: calls then fail as MLflow's do."""

    def __init__(self):
        self.up, self.calls, self.runs = True, [], 0

    def __getattr__(self, name):
        def call(*args, **kwargs):
            if not self.up:
                raise MlflowException(
                    "API request to http://bob:hunter22@127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with "
                    "exception HTTPConnectionPool: Max retries exceeded ([Errno 111] Connection refused)"
                )
            self.calls.append((name, args))
            if name == "create_run":
                self.runs += 1
                return type("Run", (), {"info": type("Info", (), {"run_id": f"run{self.runs}"})})()
            return None

        return call


def test_writes_wait_in_order_with_stand_in_ids_and_are_made_when_the_server_is_back(monkeypatch, capsys):
    monkeypatch.setattr(tracking_store, "FLUSH_EVERY", (0.0, 0.0))  # every later write tries again
    fake = FlakyClient()
    store = tracking_store.TrackingStore("http://bob:hunter22@127.0.0.1:5000", retry_s=0.2, client=fake)
    store.buffering = True
    store.log_batch("run0", metrics=[1])
    fake.up = False
    stand_in = store.create_run("exp", run_name="b").info.run_id
    store.log_batch(stand_in, metrics=[2])
    store.set_terminated(stand_in, "FINISHED")
    assert stand_in == "pending-0" and [c[0] for c in fake.calls] == ["log_batch"]
    fake.up = True
    store.log_batch("run0", metrics=[3])  # the next write makes the waiting ones first
    assert [(name, args[0]) for name, args in fake.calls] == [
        ("log_batch", "run0"),
        ("create_run", "exp"),
        ("log_batch", "run1"),
        ("set_terminated", "run1"),
        ("log_batch", "run0"),
    ]
    assert store.unwritten() is None
    fake.up = False
    store.log_batch("run1", metrics=[4])
    assert store.flush(within_s=0.3) is False
    line = store.unwritten()
    assert line.startswith("1 MLflow write(s) could not be made (1 log_batch): the MLflow tracking server")
    assert "http://bob:***@127.0.0.1:5000" in line and "hunter22" not in line + capsys.readouterr().err


def test_during_training_a_write_waits_in_memory_after_seconds_not_the_whole_retry_bound():
    """The sweep's driver writes from Tune's event loop: a server away must not hold the loop for
    `retry_s` (30 s) at the first write, only for BUFFERED_RETRY_S."""
    fake = FlakyClient()
    store = tracking_store.TrackingStore("http://127.0.0.1:5000", retry_s=30.0, client=fake)
    store.buffering = True
    fake.up = False
    start = time.monotonic()
    store.log_batch("run0", metrics=[1])
    held = time.monotonic() - start
    assert 0.4 < held <= tracking_store.BUFFERED_RETRY_S + 0.5, held  # retried with back-off, then held
    assert len(store.pending) == 1 and fake.calls == []


# --------------------------------------------------------------------------- two drivers on one sweep
def test_a_second_driver_refuses_naming_the_first_and_leaves_its_trial_alone(tmp_path, home, store):
    uri, _ = store
    plan = small_plan(tmp_path, "two-drivers")
    first = SweepTracker(uri, plan)
    run_id = first.start_trial(plan.trials[0])
    first.log_metrics("a-seed0", {"train/loss": 2.0}, 1)
    with pytest.raises(UserError) as err:
        SweepTracker(uri, plan, resume=True)
    message = str(err.value)
    assert message.startswith(f"sweep {first.sweep_id} of two-drivers (size smoke) is being run by another driver: ")
    held = lease.holder(MlflowClient(uri).get_run(first.parent_id))
    assert (held.host, held.pid) == (socket.gethostname(), first.lease.me.pid)
    assert f"host {held.host}, process {held.pid}, since 20" in message
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # untouched: not closed, not KILLED
    first.log_metrics("a-seed0", {"train/loss": 1.0}, 2)  # and the first driver goes on
    first.finish_trial("a-seed0", "FINISHED")
    assert first.finish("FINISHED") is None
    assert steps_of(uri, run_id) == [(1, 2.0), (2, 1.0)] and client.get_run(run_id).info.status == "FINISHED"
    assert lease.LEASE not in client.get_run(first.parent_id).data.tags  # released at the end
    after = SweepTracker(uri, plan, resume=True)  # a finished driver's sweep resumes at once
    assert after.parent_id == first.parent_id and after.is_done(plan.trials[0]) and after.closed == []
    after.finish("FINISHED")


def test_a_dead_drivers_lease_expires_at_once_on_its_host_and_after_its_ttl_elsewhere(tmp_path, home, store):
    uri, _ = store
    plan = small_plan(tmp_path, "dead-driver")
    first = SweepTracker(uri, plan)
    orphan = first.start_trial(plan.trials[0])
    driver_dies(first)  # its process is gone from this host: no need to wait
    second = SweepTracker(uri, plan, resume=True)
    assert second.closed == [orphan] and MlflowClient(uri).get_run(orphan).info.status == "KILLED"
    second.lease.stop()
    elsewhere = {"host": "node-7", "pid": 4242, "since": time.time() - 500, "token": "t"}
    client = MlflowClient(uri)
    client.set_tag(second.parent_id, lease.LEASE, json.dumps({**elsewhere, "heartbeat": time.time() - 10}))
    with pytest.raises(UserError, match=r"another driver: host node-7, process 4242, since .* \(last heartbeat 1\d s"):
        SweepTracker(uri, plan, resume=True)
    client.set_tag(second.parent_id, lease.LEASE, json.dumps({**elsewhere, "heartbeat": time.time() - lease.TTL_S - 1}))
    third = SweepTracker(uri, plan, resume=True)
    assert third.parent_id == second.parent_id
    assert lease.holder(client.get_run(third.parent_id)).token == third.lease.me.token
    third.finish("FINISHED")


def test_a_live_driver_renews_its_lease(tmp_path, home, store, monkeypatch):
    monkeypatch.setattr(lease, "EVERY_S", 0.2)
    uri, _ = store
    tracker = SweepTracker(uri, small_plan(tmp_path, "renew"))
    client = MlflowClient(uri)
    before = lease.holder(client.get_run(tracker.parent_id)).heartbeat
    time.sleep(1.5)
    after = lease.holder(client.get_run(tracker.parent_id))
    assert after.heartbeat > before and after.since == tracker.lease.me.since
    tracker.finish("FINISHED")


def test_the_tracker_pickles_as_tune_pickles_its_callbacks(tmp_path, home, store):
    import pickle

    uri, _ = store
    tracker = SweepTracker(uri, small_plan(tmp_path, "pickled"))
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy.parent_id == tracker.parent_id and copy.lease.me == tracker.lease.me
    tracker.finish("FINISHED")
