"""The faults a user meets outside the code: a busy, broken or unreachable MLflow store, a full or
read-only disk. Each is recognised from the exception (MLflow wraps SQLAlchemy and requests errors
in its own; Ray wraps a trial's) and told in one line that names the store or path and what to do.
"""

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager

from .errors import UserError

DISK_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only"}
# How each fault shows in an exception's text, whatever wrapped it (MLflow, SQLAlchemy, Ray, pyarrow).
_SIGNS = {
    "locked": re.compile(r"database (table )?is (locked|busy)", re.I),
    "corrupt": re.compile(r"file is not a database|database disk image is malformed|file is encrypted", re.I),
    "unreachable": re.compile(
        r"Max retries exceeded|Connection (refused|reset|aborted)|Failed to establish a new connection|"
        r"Read timed out|RemoteDisconnected|Name or service not known|"
        r"error code (429|5\d\d)|TEMPORARILY_UNAVAILABLE|ServiceUnavailable",
        re.I,
    ),
    "full": re.compile(r"No space left on device|Disk quota exceeded|database or disk is full", re.I),
    "readonly": re.compile(r"Read-only file system|attempt to write a readonly database", re.I),
}
TRANSIENT = {"locked", "unreachable", "full", "readonly"}  # may pass: a write retries, then waits in memory


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def fault(err: BaseException | str) -> str | None:
    """The kind of outside fault behind `err` ('locked', 'corrupt', 'unreachable', 'full',
    'readonly'), or None for anything else (a bug, a bad value: not ours to retry)."""
    if isinstance(err, BaseException):
        for e in _chain(err):
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                return "full"
            if isinstance(e, OSError) and e.errno == errno.EROFS:
                return "readonly"
            if isinstance(e, (ConnectionError, TimeoutError)):
                return "unreachable"
        text = " ".join(str(e) for e in _chain(err))
    else:
        text = err
    return next((kind for kind, sign in _SIGNS.items() if sign.search(text)), None)


def wrapped_by(err: BaseException, modules: tuple[str, ...]) -> bool:
    """Whether an exception in `err`'s chain comes from one of `modules` (prefixes, e.g. 'mlflow.')."""
    return any(type(e).__module__.startswith(modules) for e in _chain(err))


_PASSWORD_IN_URI = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def store_path(uri: str) -> str:
    """The file of a sqlite store, else the URI with any password in it masked."""
    return uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else _PASSWORD_IN_URI.sub(r"\1***@", uri)


def store_message(kind: str, uri: str, waited_s: float = 0.0) -> str:
    """One line for a store fault: which store, what is wrong, what to do."""
    where = store_path(uri)
    remote = uri.startswith(("http://", "https://"))
    waited = f" (waited {waited_s:.0f} s)" if waited_s >= 1 else ""
    if kind == "locked" and remote:
        return f"the MLflow tracking server {where} reports its store busy (database is locked){waited}: try again"
    if kind == "locked":
        return (
            f"the MLflow store {where} is locked by another process{waited}: wait for it to finish, or serve "
            f"the store with a tracking server (`tipslab ui`, or `mlflow server --backend-store-uri {uri}`) "
            "and point every tipslab at it with MLFLOW_TRACKING_URI=http://HOST:PORT"
        )
    if kind == "corrupt":
        return (
            f"the MLflow store {where} is not a readable sqlite database (corrupt or another kind of file): "
            "move it aside (a new store is made on the next run) or set MLFLOW_TRACKING_URI to another store"
        )
    if kind == "unreachable" and remote:
        return (
            f"the MLflow tracking server {where} did not answer{waited}: start it, or check "
            "MLFLOW_TRACKING_URI (host, port, https) and the network"
        )
    if kind == "full":
        return f"the MLflow store {where}: no space left on its disk{waited}: free space, or move TIPSLAB_HOME"
    if kind == "readonly":
        return f"the MLflow store {where} is on read-only storage: set TIPSLAB_HOME to a writable folder"
    return f"the MLflow store {where} is not available{waited}"


def user_message(err: BaseException, uri: str) -> str | None:
    """The one-line message for an outside fault of the store at `uri` behind `err`, if it is one."""
    kind = fault(err)
    return store_message(kind, uri) if kind else None


# --------------------------------------------------------------------------- the run's storage
def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_message(kind: str, path: str, detail: str = "") -> str:
    detail = f" ({detail})" if detail else ""
    if kind == "readonly":
        return f"the run storage {path} is read-only{detail}: set TIPSLAB_HOME to a writable folder"
    return f"the run storage {path} is full{detail}: free space there, or set TIPSLAB_HOME to a larger disk"


def check_storage(path: str, need_bytes: int, what: str = "") -> None:
    """Before a run: `path` can be written and has `need_bytes` free (an estimate of what the run
    writes), or a UserError names the path and the numbers. Object stores (s3://) are not checked."""
    if "://" in path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tipslab-probe-"):
            pass
    except OSError as err:
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise UserError(disk_message("readonly", path, err.strerror or "")) from None
        if err.errno in DISK_ERRNOS:
            raise UserError(disk_message("full", path, err.strerror or "")) from None
        raise
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise UserError(
            disk_message("full", path, f"{size(free)} free, about {size(need_bytes)} needed{what and ' for ' + what}")
        )


@contextmanager
def storage_guard(path: str, low_bytes: int = 16 * 1024**2):
    """Around work that writes to `path`: a full or read-only disk becomes a UserError naming it,
    also when it shows only as a later symptom (Tune reading back a state file that was cut short
    ends in `EOFError: Ran out of input`): then the free space left on `path` tells."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        disk = disk_fault(err, path, low_bytes)
        if disk is None:
            raise
        raise disk from err


def disk_fault(err: BaseException | None, path: str, low_bytes: int = 0) -> UserError | None:
    """The UserError for `err` if a full or read-only disk under `path` caused it (or if less than
    `low_bytes` is left there now), else None."""
    if err is None:
        return None
    kind = fault(err)
    if kind not in ("full", "readonly"):
        kind = "full" if "://" not in path and _free(path) < low_bytes else None
    if kind is None:
        return None
    filename = next((e.filename for e in _chain(err) if isinstance(e, OSError) and e.filename), None)
    detail = f"{size(_free(path))} free" if kind == "full" and "://" not in path else ""
    if filename and not str(filename).startswith(path):
        detail = f"{detail}; writing {filename}".lstrip("; ")
    return UserError(disk_message(kind, path, detail))


def _free(path: str) -> float:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return float("inf")
