"""MLflow writes that a busy or absent store cannot turn into a failed training run.

Every call retries a passing fault (a sqlite store locked by another process, a tracking server
that refuses connections or answers 5xx, a full disk under the artifacts) with back-off, for at
most `retry_s` in all. Before training (`buffering` off) a fault that outlasts that is a UserError
naming the store. During training (`buffering` on) a write retries for `BUFFERED_RETRY_S` at most,
then waits in memory instead, in order, and so does every later one until the store answers again:
the waiting writes are tried again on later writes (at growing intervals, so that a dead store does
not stall the driver at every report) and at the end (`flush`). A run created while the store was
away gets a stand-in id, which its later writes carry until the run exists. What could not be
written at the end is told in one line (`unwritten`), naming the store with its credentials masked.
"""

import functools
import itertools
import logging
import os
import shutil
import sys
import tempfile
import time
import weakref
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from .errors import UserError
from .faults import TRANSIENT, fault, store_message, store_path

RETRY_S = 30.0  # the longest one call keeps retrying before it fails (or, during training, waits in memory)
# During training a write retries this long at most before it waits in memory: the sweep's driver
# writes from Tune's event loop, and a loop held for RETRY_S backs up the trials' reports (seen: a
# Ray Tune trial deadlocked on its own result queue after a 31 s stall while the server restarted).
BUFFERED_RETRY_S = 3.0
# MLflow has sqlite wait up to 20 s for a lock in every session (its busy_timeout pragma), which alone
# would hold the loop past that bound: while writes may wait in memory, a session waits this long.
SQLITE_BUFFERED_WAIT_MS = 1000
PAUSES = (0.5, 8.0)  # back-off between tries of one call: first, largest
FLUSH_EVERY = (5.0, 60.0)  # while writes wait: between tries to make them, first, largest
WRITES = {
    "create_experiment",
    "create_run",
    "update_run",
    "set_tag",
    "delete_tag",
    "set_terminated",
    "log_batch",
    "log_metric",
    "log_param",
    "log_dict",
    "log_text",
    "log_artifact",
    "log_inputs",
}
PENDING = "pending-"  # the prefix of a stand-in run id


class StoreUnavailable(UserError):
    """The store stayed away for the whole retry time; the message names it."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def bound_sqlite_waits(store: "TrackingStore") -> None:
    """While `store` is buffering, the sqlite sessions of its client wait SQLITE_BUFFERED_WAIT_MS for
    a lock instead of MLflow's 20 s (its pragma, sent at every session, rewritten on the way), so
    that a buffered write keeps BUFFERED_RETRY_S. MLflow shares one store per URI within a process:
    its other users then wait as long, and go through this module's retries as well."""
    from sqlalchemy import event

    client = getattr(store.client, "_tracking_client", None)
    engine = getattr(getattr(client, "store", None), "engine", None)
    if engine is None:  # another kind of store
        return
    ref = weakref.ref(store)  # the engine outlives the store: it must not keep it

    def rewrite(conn, cursor, statement, parameters, context, executemany):
        held = ref()
        if held is not None and held.buffering and statement.lstrip().upper().startswith("PRAGMA BUSY_TIMEOUT"):
            statement = f"PRAGMA busy_timeout = {SQLITE_BUFFERED_WAIT_MS};"
        return statement, parameters

    event.listen(engine, "before_cursor_execute", rewrite, retval=True)


class TrackingStore:
    """An MlflowClient whose writes retry and, with `buffering`, wait in memory (see the module)."""

    def __init__(self, uri: str, retry_s: float | None = None, client=None):
        # MLflow's own HTTP retries would take minutes (7 tries, doubling from 2 s): a few quick
        # ones, and the bounded back-off here. A user's own settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # A locked sqlite store makes MLflow log a traceback at every try; the message here says it.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self.uri = uri
        self.retry_s = RETRY_S if retry_s is None else retry_s
        # A sqlite store is opened (and its tables made) here: it may be locked or corrupt already.
        self.client = client if client is not None else self._retried(lambda: MlflowClient(uri))
        self.buffering = False
        if client is None and uri.startswith("sqlite:"):
            bound_sqlite_waits(self)
        self.pending: list[tuple[str, tuple, dict, str | None]] = []  # (method, args, kwargs, stand-in id)
        self.ids: dict[str, str] = {}  # stand-in run id -> the run's id once created
        self.dropped: list[str] = []  # writes the store refused for good (not a passing fault)
        self.kind: str | None = None  # the fault that made writes wait
        self.away_since: float | None = None
        self._stand_ins = itertools.count()
        self._flush_every, self._next_flush = FLUSH_EVERY[0], 0.0
        self._spool: str | None = None  # copies of artifact files that wait

    def __getattr__(self, name):
        if name.startswith("_") or name == "client":  # not yet set (unpickling): not the client's
            raise AttributeError(name)
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr
        return functools.partial(self.write if name in WRITES else self.call, name)

    # ------------------------------------------------------------------ one call, retried
    def call(self, name: str, *args, **kwargs):
        """`client.name(*args, **kwargs)`, retried over passing faults for `retry_s`; then a
        StoreUnavailable (a UserError naming the store). A corrupt store fails at once."""
        return self._retried(lambda: self._once(name, args, kwargs))

    def _retried(self, attempt, limit_s: float | None = None):
        limit_s = self.retry_s if limit_s is None else limit_s
        start = time.monotonic()
        pause = PAUSES[0]
        while True:
            try:
                return attempt()
            except Exception as err:
                kind = fault(err)
                if kind == "corrupt":
                    raise UserError(store_message(kind, self.uri)) from err
                if kind not in TRANSIENT:
                    raise
                waited = time.monotonic() - start
                if waited + pause > limit_s:
                    raise StoreUnavailable(kind, store_message(kind, self.uri, waited)) from err
                time.sleep(pause)
                pause = min(pause * 2, PAUSES[1])

    def _once(self, name: str, args: tuple, kwargs: dict):
        if args and isinstance(args[0], str) and args[0] in self.ids:
            args = (self.ids[args[0]], *args[1:])
        return getattr(self.client, name)(*args, **kwargs)

    # ------------------------------------------------------------------ writes that may wait
    def write(self, name: str, *args, **kwargs):
        if not self.buffering:
            return self.call(name, *args, **kwargs)
        if not self.pending:
            try:
                return self._retried(lambda: self._once(name, args, kwargs), min(self.retry_s, BUFFERED_RETRY_S))
            except StoreUnavailable as err:
                self._away(err.kind, str(err))
        stand_in = self._hold(name, args, kwargs)
        self._flush_once()
        if name == "create_run":
            return SimpleNamespace(info=SimpleNamespace(run_id=self.ids.get(stand_in, stand_in)))
        return None

    def _away(self, kind: str, message: str) -> None:
        self.kind, self.away_since = kind, time.time()
        self._flush_every = FLUSH_EVERY[0]
        self._next_flush = time.monotonic() + self._flush_every
        print(
            f"tracking: {message}; training goes on, and its MLflow writes wait in memory until the store is back",
            file=sys.stderr,
            flush=True,
        )

    def _hold(self, name: str, args: tuple, kwargs: dict) -> str | None:
        now = int(time.time() * 1000)  # when it happened, not when it is written
        stand_in = None
        if name == "create_run":
            kwargs.setdefault("start_time", now)
            stand_in = f"{PENDING}{next(self._stand_ins)}"
        elif name == "set_terminated":
            kwargs.setdefault("end_time", now)
        elif name == "log_artifact":  # the file may be temporary: keep a copy until it is written
            self._spool = self._spool or tempfile.mkdtemp(prefix="tipslab-mlflow-waiting-")
            copy = os.path.join(self._spool, str(len(self.pending)), os.path.basename(args[1]))
            os.makedirs(os.path.dirname(copy))
            shutil.copy2(args[1], copy)
            args = (args[0], copy, *args[2:])
        self.pending.append((name, args, kwargs, stand_in))
        return stand_in

    def _flush_once(self, force: bool = False) -> bool:
        """One try at the waiting writes, in order; False if the store is still away."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._next_flush:
            return False
        made = 0
        while self.pending:
            name, args, kwargs, stand_in = self.pending[0]
            try:
                result = self._once(name, args, kwargs)
            except Exception as err:
                kind = fault(err)
                if kind in TRANSIENT:
                    self._flush_every = min(self._flush_every * 2, FLUSH_EVERY[1])
                    self._next_flush = time.monotonic() + self._flush_every
                    return False
                self.dropped.append(f"{name}: {str(err).splitlines()[0][:200]}")
                result = None
            if stand_in is not None and result is not None:
                self.ids[stand_in] = result.info.run_id
            self.pending.pop(0)
            made += 1
        away = time.time() - (self.away_since or time.time())
        print(
            f"tracking: the MLflow store {store_path(self.uri)} is back after {away:.0f} s: "
            f"{made} waiting write(s) made",
            file=sys.stderr,
            flush=True,
        )
        self.kind = self.away_since = None
        if self._spool:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None
        return True

    def flush(self, within_s: float | None = None) -> bool:
        """At the end: keep trying the waiting writes for up to `within_s` (default `retry_s`)."""
        deadline = time.monotonic() + (self.retry_s if within_s is None else within_s)
        pause = PAUSES[0]
        while not self._flush_once(force=True):
            if time.monotonic() + pause > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, PAUSES[1])
        return True

    def unwritten(self) -> str | None:
        """One line on what could not be written, or None when everything was."""
        parts = []
        if self.pending:
            counts: dict[str, int] = {}
            for name, *_ in self.pending:
                counts[name] = counts.get(name, 0) + 1
            what = ", ".join(f"{n} {name}" for name, n in counts.items())
            parts.append(f"{len(self.pending)} MLflow write(s) could not be made ({what}): " + self._away_message())
        if self.dropped:
            refused = "; ".join(self.dropped[:3])
            parts.append(f"{len(self.dropped)} MLflow write(s) to {store_path(self.uri)} were refused: {refused}")
        return "; ".join(parts) or None

    def _away_message(self) -> str:
        waited = time.time() - self.away_since if self.away_since else 0.0
        return store_message(self.kind or "unreachable", self.uri, waited)
