"""`tipslab` run with a pseudo-terminal for stdin, stdout and stderr, as a user's terminal runs it:
for the tests of what a user sees while work runs (progress lines redrawn with `\\r`)."""

import os
import pty
import select
import subprocess
import sys
import time

from conftest import REPO


def in_a_terminal(args: list[str], env: dict, timeout_s: float = 120, probe=lambda: None, prefix: list[str] = ()):
    """Run `tipslab ARGS` (after `prefix`, a command such as `nice`); return its exit code and every
    piece of text between carriage returns and newlines, as (when it arrived, the piece, what
    `probe()` said then)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "tipslab.orchestrator.cli", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=REPO,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    arrived, buffer, deadline = [], "", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            now, seen = time.monotonic(), probe()
            text = (buffer + chunk.decode(errors="replace")).replace("\r\n", "\n").replace("\n", "\r")
            *pieces, buffer = text.split("\r")
            arrived += [(now, p.strip(), seen) for p in pieces if p.strip()]
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(leader)
    return proc.returncode, arrived
