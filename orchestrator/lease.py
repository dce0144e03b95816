"""Which driver runs a sweep: a lease on the sweep's parent run, renewed while its driver lives.

The lease is one tag on the parent run: the driver's host, process id, start time and a heartbeat
time, renewed from a small background thread every `EVERY_S`. A lease has expired when its
heartbeat is older than `TTL_S`, or at once when its process is gone from this same host. A
`--resume` takes over a sweep only from an expired lease (or none: sweeps from before leases), so
it never closes the runs of a driver that is still training.
"""

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime

from mlflow.tracking import MlflowClient

from .errors import UserError

LEASE = "tipslab.lease"
EVERY_S = 20.0  # how often a live driver renews its lease
TTL_S = 120.0  # a lease not renewed for this long is expired (a store can be away for a while)
SETTLE_S = 1.0  # after taking a lease: how long to wait before reading it back (two drivers at once)


@dataclass
class Holder:
    host: str
    pid: int
    since: float  # when the driver took the lease (epoch seconds)
    heartbeat: float
    token: str

    def expired(self, now: float | None = None) -> bool:
        if self.host == socket.gethostname() and not _alive(self.pid):
            return True
        return (now or time.time()) - self.heartbeat > TTL_S

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since).astimezone().isoformat(timespec="seconds")
        return (
            f"host {self.host}, process {self.pid}, since {since} "
            f"(last heartbeat {max(0.0, time.time() - self.heartbeat):.0f} s ago)"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(run) -> Holder | None:
    """The lease on a parent run (an mlflow Run), or None (no lease, or one not readable)."""
    text = run.data.tags.get(LEASE)
    try:
        return Holder(**json.loads(text)) if text else None
    except (TypeError, ValueError):
        return None


def refuse(what: str, held: Holder) -> UserError:
    return UserError(
        f"{what} is being run by another driver: {held.describe()}; wait for it to finish, or stop it "
        f"(a driver that died frees the sweep {TTL_S:.0f} s after its last heartbeat, at once on its own host)"
    )


class Lease:
    """This driver's lease on one parent run: `take` it, and it is renewed until `release`."""

    def __init__(self, client, tracking_uri: str, run_id: str):
        self.client, self.run_id = client, run_id  # `client`: the driver's (retrying) store, for take/release
        self.renewer = MlflowClient(tracking_uri)  # the thread's own client: never waits on the driver's
        now = time.time()
        self.me = Holder(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex[:12])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks (and so the tracker) into its state file: not the thread.
        return {**self.__dict__, "_stop": None, "_thread": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _stop=threading.Event())

    def take(self, what: str, settle: bool = False) -> None:
        """Write the lease and start renewing it. With `settle` (another driver may be taking it
        at this moment), read it back after a while: the last writer wins, the other refuses."""
        self.client.set_tag(self.run_id, LEASE, self._text())
        if settle:
            time.sleep(SETTLE_S)
            held = holder(self.client.get_run(self.run_id))
            if held is not None and held.token != self.me.token:
                raise refuse(what, held)
        self._thread = threading.Thread(target=self._renew, name="tipslab-lease", daemon=True)
        self._thread.start()

    def _text(self) -> str:
        self.me.heartbeat = time.time()
        return json.dumps(asdict(self.me))

    def _renew(self) -> None:
        warned = False
        while not self._stop.wait(EVERY_S):
            try:
                self.renewer.set_tag(self.run_id, LEASE, self._text())
            except Exception as err:  # the store is away: the driver's writes say so; the lease just ages
                if not warned:
                    print(f"tracking: the sweep's lease was not renewed ({type(err).__name__})", file=sys.stderr)
                    warned = True

    def stop(self) -> None:
        """Stop renewing: the lease stays and expires (what a driver's death leaves)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def release(self) -> None:
        """Stop renewing and free the sweep (a failed release only leaves the lease to expire)."""
        self.stop()
        try:
            self.client.delete_tag(self.run_id, LEASE)
        except Exception:
            pass
