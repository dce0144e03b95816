"""A real `mlflow server` on loopback for tests (sqlite backend, artifacts proxied to a local
folder), which a test can stop and start again on the same port and store."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class MlflowServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 240) -> "MlflowServer":
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(self.root / "artifacts")]
        self.proc = subprocess.Popen(
            command,
            stdout=open(self.root / "server.log", "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.root,
        )
        end = time.monotonic() + timeout_s
        while not self.healthy():
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
            assert time.monotonic() < end, f"the MLflow server on {self.url} did not come up in {timeout_s} s"
            time.sleep(0.5)
        return self

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
