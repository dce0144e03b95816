"""The local multi-node cluster from the shell: start, connect with its token, stop."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import REPO

from tipslab.orchestrator.localcluster import group_alive

DRIVER = (
    "import json, ray; ray.init(); "
    "print(json.dumps({'nodes': sum(n['Alive'] for n in ray.nodes()), 'res': ray.cluster_resources()}))"
)


def cli(*args, env=None):
    return subprocess.run(
        [str(REPO / "infra" / "local-cluster.sh"), *args],
        capture_output=True,
        text=True,
        env=env or os.environ,
        timeout=300,
    )


def test_shell_start_connect_with_token_and_stop(tmp_path):
    state = tmp_path / "lc"
    started = cli("start", "--nodes", "2", "--resources", '{"trainer": 1}', "--dir", str(state))
    assert started.returncode == 0, started.stderr
    try:
        saved = json.loads((state / "cluster.json").read_text())
        assert len(saved["process_groups"]) == 2 and all(group_alive(g) for g in saved["process_groups"])
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in cli("env", "--dir", str(state)).stdout.split("\n")
            if line
        )
        assert exports["RAY_AUTH_MODE"] == "token" and exports["RAY_ADDRESS"] == saved["address"]
        token = open(exports["RAY_AUTH_TOKEN_PATH"]).read()
        assert len(token) == 64 and token not in started.stdout + json.dumps(saved)

        clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        seen = subprocess.run(
            [sys.executable, "-c", DRIVER], env={**clean, **exports}, capture_output=True, text=True, timeout=120
        )
        assert seen.returncode == 0, seen.stderr[-2000:]
        info = json.loads(seen.stdout.strip().splitlines()[-1])
        assert info["nodes"] == 2 and info["res"]["CPU"] == 2 and info["res"]["trainer"] == 1  # head has no trainer
        # the dashboard (Ray Jobs) answers only with the token
        jobs = urllib.request.Request(f"{saved['dashboard_url']}/api/jobs/")
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(jobs, timeout=30)
        jobs.add_header("Authorization", f"Bearer {token}")
        assert [j["type"] for j in json.loads(urllib.request.urlopen(jobs, timeout=30).read())] == ["DRIVER"]  # ours
        assert cli("start", "--dir", str(state)).returncode == 2  # one cluster per state folder
    finally:
        stopped = cli("stop", "--dir", str(state))
    assert stopped.returncode == 0, stopped.stderr
    assert not any(group_alive(g) for g in saved["process_groups"])
    assert cli("status", "--dir", str(state)).returncode == 1
