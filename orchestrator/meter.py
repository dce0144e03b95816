"""Progress of one long piece of work (rendering scenes, ingesting rows) on stderr: in a terminal,
one line rewritten in place at most a few times a second (done/total, rate, ETA); anywhere else
(a log file, CI, a Ray job's driver log), nothing while it runs and one summary line at the end.

The jobs layer knows nothing of this: its functions take an `on_progress(done, total)` callback
and a `Meter` is one."""

from __future__ import annotations

import contextlib
import sys
import time

from tipslab.jobs.redact import redact


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def rate_text(rate: float, unit: str) -> str:
    return f"{rate:.1f} {unit}/s" if rate < 10 else f"{rate:.0f} {unit}/s"


def progress_line(what: str, unit: str, done: int, total: int | None, seconds: float) -> str:
    """`rendering scenes train: 412/1024 scenes (40%)  96 scenes/s  ETA 6s`; without a total,
    `ingesting: 412 rows  96 rows/s`. No rate before the first one is done."""
    rate = done / seconds if done and seconds > 0 else None
    if total:
        parts = [f"{what}: {done}/{total} {unit} ({100 * done / total:.0f}%)"]
    else:
        parts = [f"{what}: {done} {unit}"]
    if rate:
        parts.append(rate_text(rate, unit))
        if total and done < total:
            parts.append(f"ETA {duration((total - done) / rate)}")
    return "  ".join(parts)


def summary_line(what: str, unit: str, done: int, seconds: float) -> str:
    """`rendering scenes train: 1024 scenes in 11s (93 scenes/s)`."""
    rate = f" ({rate_text(done / seconds, unit)})" if done and seconds > 0 else ""
    return f"{what}: {done} {unit} in {duration(seconds)}{rate}"


class Meter:
    """`meter(done, total)` as work goes on; `close()` (or leaving `with`) prints the summary.

    A meter whose `done` reaches a known `total` closes itself, unless `closes_at_total` is off (a
    command that may still fail after its last row, as ingestion's final bad-row check: its error is
    then the one line it prints)."""

    def __init__(
        self,
        what: str,
        unit: str = "rows",
        stream=None,
        every: float = 0.25,
        clock=time.monotonic,
        closes_at_total: bool = True,
    ):
        self.what, self.unit, self.every, self.clock = redact(what), unit, every, clock  # a split's name is the user's
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = clock()
        self.done, self.total = 0, None
        self.shown = None  # when the line was last drawn
        self.width = 0  # of the line on screen, to blank what a shorter one leaves
        self.closed = False
        self.closes_at_total = closes_at_total

    def __call__(self, done: int, total: int | None = None) -> None:
        if self.closed:
            return
        self.done, self.total = done, total
        if total is not None and done >= total and self.closes_at_total:
            self.close()
            return
        now = self.clock()
        if self.tty and (self.shown is None or now - self.shown >= self.every):
            self.shown = now
            self.draw(progress_line(self.what, self.unit, done, total, now - self.start), end="")

    def draw(self, line: str, end: str) -> None:
        if self.tty:
            pad = " " * max(0, self.width - len(line))
            self.width = 0 if end else len(line)
            line = "\r" + line + pad
        self.stream.write(line + end)
        self.stream.flush()

    def say(self, line: str) -> None:
        """A line of its own (a skipped row, say) above the progress line, which is drawn again at
        the next update."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width, self.shown = 0, None
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, ok: bool = True) -> None:
        """The summary line; after a failure only the end of the terminal's line (the error follows)."""
        if self.closed:
            return
        self.closed = True
        if ok:
            self.draw(summary_line(self.what, self.unit, self.done, self.clock() - self.start), end="\n")
        elif self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(ok=kind is None)


@contextlib.contextmanager
def split_meters(what: str, unit: str, stream=None):
    """A callback `(split, done, total)` with one meter per split, for jobs that make several
    (jobs/data/pipeline/prepare.py's ensure_scenes); the meters are closed on leaving."""
    meters: dict[str, Meter] = {}

    def on_progress(split: str, done: int, total: int | None) -> None:
        if split not in meters:
            meters[split] = Meter(f"{what} {split}", unit, stream=stream)
        meters[split](done, total)

    ok = False
    try:
        yield on_progress
        ok = True
    finally:
        for meter in meters.values():
            meter.close(ok=ok)


def ensure_scenes_shown(exp) -> list[str]:
    """ensure_scenes with the rendering of each missing split shown as it goes."""
    from tipslab.jobs.data.pipeline.prepare import ensure_scenes

    with split_meters("rendering scenes", "scenes") as on_progress:
        return ensure_scenes(exp, on_progress=on_progress)
