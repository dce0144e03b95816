"""A Ray cluster of several node processes on this machine (loopback), for multi-node tests and
for users who want to try cluster mode without a cluster.

Each node is a real `ray start` process tree (`--block`, in a session of its own), so a worker
node can be SIGKILLed like a machine that loses power, which `ray.cluster_utils` cannot do.
Ray 2.59+ turns token authentication on for new clusters: the cluster gets its own token file,
and every node, driver and `ray job submit` must see the same `RAY_AUTH_MODE` and token path
(`.env`). Ray advertises this machine's own IP for every node (it replaces loopback addresses so
that nodes stay reachable); the head's GCS and the dashboard are reached on 127.0.0.1. Each node
gets its own object store size (by default each would claim a share of the
whole machine) and the cluster its own temp dir, so it never meets other Ray instances here.

From Python (tests):

    with LocalCluster(nodes=3, worker_resources={"trainer": 1}) as cluster:
        subprocess.run([...], env={**os.environ, **cluster.env})
        cluster.kill_node(1)      # SIGKILL worker node 1 (raylet, workers, agents)
        cluster.add_node()        # a replacement node

From the shell (`infra/local-cluster.sh` wraps this):

    python -m tipslab.orchestrator.localcluster start --nodes 3 --cpus-per-node 1
    eval "$(python -m tipslab.orchestrator.localcluster env)"   # RAY_ADDRESS and the auth variables
    tipslab train ablations/base/tips_tiny.yaml                  # runs on the local cluster
    python -m tipslab.orchestrator.localcluster status
    python -m tipslab.orchestrator.localcluster stop

The shell commands keep their state (addresses, process groups, the temp dir under /tmp that
holds the token and the nodes' logs) in `$TIPSLAB_HOME/local-cluster/cluster.json` (or `--dir`).
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .runtime import QUIET_ENV, home

READY_LINE = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_executable() -> str:
    """The `ray` next to this interpreter (the project's venv), else the one on PATH."""
    local = Path(sys.executable).with_name("ray")
    return str(local) if local.exists() else shutil.which("ray") or "ray"


class LocalCluster:
    """A head node plus `nodes - 1` worker nodes, all on 127.0.0.1.

    `worker_resources` are custom resources given to every worker node (not the head), so that a
    test can pin training workers to worker nodes, e.g. {"trainer": 1} and
    `resources_per_worker={"trainer": 1}`. `head_cpus`: the head's CPUs (default `cpus_per_node`);
    0 keeps every task that needs a CPU on the worker nodes, as a cluster's head is often set up.
    `node_env`: extra environment variables for the nodes (e.g. Ray settings such as
    RAY_memory_monitor_refresh_ms).
    """

    def __init__(
        self,
        nodes: int = 2,
        cpus_per_node: int = 1,
        object_store_mb: int = 150,
        dashboard: bool = True,
        temp_dir: str | None = None,
        worker_resources: dict | None = None,
        start_timeout_s: float = 120,
        node_env: dict | None = None,
        head_cpus: int | None = None,
    ):
        if nodes < 1:
            raise ValueError("a cluster needs at least its head node (nodes >= 1)")
        self.nodes, self.cpus_per_node, self.object_store_mb = nodes, cpus_per_node, object_store_mb
        self.dashboard, self.worker_resources, self.start_timeout_s = dashboard, worker_resources or {}, start_timeout_s
        self.node_env = node_env or {}  # extra variables for every node's processes
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus
        self._own_temp = temp_dir is None
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="tipslab-ray-"))
        self.port = self.dashboard_port = None
        self.procs: list[subprocess.Popen | None] = []  # index 0 is the head
        self.token_path = self.temp_dir / "auth_token"

    # -- addresses and environment ---------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict:
        """What a driver, `ray status` or `ray job submit` needs to reach this cluster. The token
        travels as a file path, so it never appears in a process list or an environment dump."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def _node_env(self) -> dict:
        env = {**os.environ, **QUIET_ENV, **self.node_env, **self.env}
        env.pop("RAY_ADDRESS")  # `ray start` takes the address as an argument
        env.pop("RAY_AUTH_TOKEN", None)  # the file is the one source of the token
        return env

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> "LocalCluster":
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.port, self.dashboard_port = free_port(), free_port()
        try:
            head = [
                "--head",
                f"--port={self.port}",
                f"--ray-client-server-port={free_port()}",
                f"--include-dashboard={str(self.dashboard).lower()}",
            ]
            if self.dashboard:
                head += ["--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
            self.procs.append(self._launch(0, head, {}, cpus=self.head_cpus))
            for _ in range(self.nodes - 1):
                self.add_node()
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self, resources: dict | None = None) -> int:
        """Start one more worker node (with `worker_resources` unless `resources` is given) and
        wait until it has joined; returns its index for `kill_node`."""
        index = len(self.procs)
        resources = self.worker_resources if resources is None else resources
        self.procs.append(self._launch(index, [f"--address={self.address}"], resources))
        return index

    def _launch(
        self, index: int, role: list[str], resources: dict, attempts: int = 3, cpus: int | None = None
    ) -> subprocess.Popen:
        """Start node `index`; Ray gives a raylet 30 s to register with the GCS, which a busy
        machine can miss, so a node that fails to start is tried again."""
        for attempt in range(attempts):
            try:
                return self._launch_once(index, role, resources, self.cpus_per_node if cpus is None else cpus)
            except RuntimeError:
                if attempt == attempts - 1:
                    raise

    def _launch_once(self, index: int, role: list[str], resources: dict, cpus: int) -> subprocess.Popen:
        node_dir = self.temp_dir / f"node{index}"
        node_dir.mkdir(parents=True, exist_ok=True)
        log = node_dir / "ray-start.log"
        cmd = [
            ray_executable(),
            "start",
            "--block",
            *role,
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--temp-dir={node_dir}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
        ]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        with open(log, "w") as out:
            # A session of its own: the node's whole process tree is one process group to kill.
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self._node_env(), start_new_session=True, cwd=node_dir
            )
        deadline = time.monotonic() + self.start_timeout_s
        while READY_LINE not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                self._kill_group(proc)
                why = f"exited with code {proc.returncode}" if proc.returncode is not None else "timed out"
                raise RuntimeError(f"ray node {index} {why} while starting; log {log}:\n{tail}")
            time.sleep(0.2)
        return proc

    def kill_node(self, index: int) -> None:
        """SIGKILL worker node `index` (1..): its raylet, workers and agents die at once, as when a
        machine is lost. The head (0) holds the cluster's state and is not killable here."""
        if index < 1 or index >= len(self.procs) or self.procs[index] is None:
            raise ValueError(f"no live worker node {index} (worker nodes are 1..{len(self.procs) - 1})")
        self._kill_group(self.procs[index])
        self.procs[index] = None

    @staticmethod
    def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)  # the group id is the leader's pid (start_new_session)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        """Worker nodes first, then the head: SIGTERM gives `ray start --block` a moment to stop its
        processes, then SIGKILL of the group makes sure nothing is left."""
        for proc in reversed([p for p in self.procs if p is not None]):
            stop_group(proc.pid)
            proc.wait()
        self.procs = []
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state for the shell commands ------------------------------------------------------------
    def state(self) -> dict:
        return {
            "address": self.address,
            "dashboard_url": self.dashboard_url if self.dashboard else None,
            "env": self.env,
            "temp_dir": str(self.temp_dir),
            "process_groups": [p.pid for p in self.procs if p is not None],
        }


def stop_group(pgid: int, grace_s: float = 3, kill_wait_s: float = 15) -> None:
    """SIGTERM a node's process group, then SIGKILL whatever is left after `grace_s`, and wait (up to
    `kill_wait_s`) until none of it runs: a SIGKILL is delivered asynchronously, and a busy machine
    may take a moment to tear a process down."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + kill_wait_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def state_file(directory: str | None) -> Path:
    return Path(directory or home() / "local-cluster") / "cluster.json"


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies that wait to be reaped do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tipslab.orchestrator.localcluster",
        description="A multi-node Ray cluster on this machine (loopback).",
    )
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument("--nodes", type=int, default=2, help="head + worker nodes (default 2)")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--object-store-mb", type=int, default=150)
    parser.add_argument(
        "--resources", default="{}", help='JSON custom resources of each worker node, e.g. {"trainer": 1}'
    )
    parser.add_argument("--dir", help="where the cluster's state file goes (default $TIPSLAB_HOME/local-cluster)")
    args = parser.parse_args(argv)
    path = state_file(args.dir)
    saved = json.loads(path.read_text()) if path.is_file() else None
    if args.command == "start":
        if saved and any(group_alive(g) for g in saved["process_groups"]):
            print(f"a local cluster is already running at {saved['address']} (stop it first)", file=sys.stderr)
            return 2
        try:
            resources = json.loads(args.resources)
        except json.JSONDecodeError as err:
            print(f"--resources: not JSON: {err}", file=sys.stderr)
            return 2
        # Ray's temp dir stays a short /tmp path: its socket paths must fit in 107 bytes.
        cluster = LocalCluster(args.nodes, args.cpus_per_node, args.object_store_mb, worker_resources=resources).start()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cluster.state(), indent=2))
        print(f"local Ray cluster of {args.nodes} nodes at {cluster.address}, dashboard {cluster.dashboard_url}")
        print('connect with: eval "$(python -m tipslab.orchestrator.localcluster env)"')
        return 0
    if saved is None:
        print(f"no local cluster recorded at {path}", file=sys.stderr)
        return 2 if args.command != "status" else 1
    if args.command == "env":
        print("\n".join(f"export {k}={v}" for k, v in saved["env"].items()))
    elif args.command == "status":
        alive = [g for g in saved["process_groups"] if group_alive(g)]
        print(json.dumps({**saved, "nodes_alive": len(alive)}, indent=2))
        return 0 if alive else 1
    else:  # stop
        for pgid in reversed(saved["process_groups"]):
            stop_group(pgid)
        path.unlink()
        shutil.rmtree(saved["temp_dir"], ignore_errors=True)
        print("local cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
