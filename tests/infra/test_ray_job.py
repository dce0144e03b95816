"""A smoke sweep submitted as a Ray Job (`ray job submit --runtime-env infra/ray/runtime_env.yaml --
tipslab sweep SPEC`) to a local multi-node Ray cluster with token authentication, its results read
back from MLflow.

As on a real cluster, the nodes' environment carries what the job needs (tipslab on PATH, where
TIPSLAB_HOME and the MLflow store are); the runtime environment ships the checkout. The MLflow store
is a sqlite file: the sweep driver is its one writer, and every node of this cluster sees the same disk.

That end-to-end job runs in `make soak` (a cluster, a trial and its evaluation: a minute on 2 cores).
`make test` checks what is the job's own: Ray accepts its runtime environment, and the package Ray
would upload from a checkout holds the specs and code and leaves out the venv, the runs and the data.
The sweep the job runs is the one tests/orchestrator/test_sweep.py and test_secrets.py run (the
latter through the CLI, on its own Ray instance); a multi-node cluster with token authentication is
tests/orchestrator/test_localcluster.py's.
"""

import os
import subprocess
import sys
from pathlib import Path
from zipfile import ZipFile

import pytest
import yaml
from conftest import REPO, tiny_overrides
from mlflow.tracking import MlflowClient

from tipslab.orchestrator.localcluster import LocalCluster

SPEC = """\
name: cluster-smoke
base: {base}
variants:
  clip: {{loss.distill_weight: 0, loss.mim_weight: 0}}
seeds: [0]
metrics:
  - {{key: eval/scenes/i2t_r1, header: "I→T R@1", goal: max}}
resources: {{workers_per_trial: 1, gpus_per_worker: 0, cpus_per_worker: 1}}
"""


def test_the_jobs_runtime_env_is_valid_and_ships_the_specs_not_the_venv_runs_or_data(tmp_path):
    from ray._private.runtime_env.packaging import PACKAGE_SIZE_WARNING, create_package
    from ray.runtime_env import RuntimeEnv

    settings = yaml.safe_load((REPO / "infra" / "ray" / "runtime_env.yaml").read_text())
    RuntimeEnv(**settings)  # Ray's own validation of the fields
    assert settings["working_dir"] == "."
    # What `ray job submit` uploads from the root of this checkout (a venv, runs and a store in it).
    package = tmp_path / "working_dir.zip"
    create_package(str(REPO), package, include_gitignore=True, excludes=settings["excludes"])
    names = ZipFile(package).namelist()
    assert {"ablations/tips_losses.yaml", "ablations/base/tips_tiny.yaml", "orchestrator/cli.py"} <= set(names)
    assert not [n for n in names if n.startswith((".git/", ".venv/", "tipslab-runs/", "tipslab.egg-info/"))]
    assert not [n for n in names if n.endswith((".db", ".parquet", ".npz", ".pyc"))]
    assert package.stat().st_size < PACKAGE_SIZE_WARNING / 10, package.stat().st_size


@pytest.mark.soak
def test_smoke_sweep_as_a_ray_job_lands_in_mlflow(tmp_path, monkeypatch):
    spec = tmp_path / "cluster-smoke.yaml"
    spec.write_text(SPEC.format(base=REPO / "ablations" / "base" / "tips_tiny.yaml"))
    home, store = tmp_path / "home", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The nodes' environment, as an image and its cluster config would give it.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("TIPSLAB_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)

    # Two nodes of 2 CPUs: a trial takes 2 (its training worker and Ray Data's budget), and its
    # evaluation asks for those 2 CPUs as one task, which must fit on one node.
    with LocalCluster(nodes=2, cpus_per_node=2, object_store_mb=150) as cluster:
        command = [
            "ray",
            "job",
            "submit",
            "--address",
            cluster.dashboard_url,
            "--runtime-env",
            "infra/ray/runtime_env.yaml",
            "--",
            "tipslab",
            "sweep",
            str(spec),
            *tiny_overrides(**{"train.steps": 4}),
        ]
        try:
            submit = subprocess.run(
                command, cwd=REPO, env={**os.environ, **cluster.env}, capture_output=True, text=True, timeout=900
            )
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"the job did not finish in 900 s:\n{(err.stdout or b'').decode()[-5000:]}") from None
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-5000:]
    assert "succeeded" in output and "| variant | I→T R@1 ↑ |" in output

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("cluster-smoke").experiment_id])
    parent = [r for r in runs if r.data.tags["tipslab.role"] == "sweep"]
    trials = [r for r in runs if r.data.tags["tipslab.role"] == "trial"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    trial = trials[0]
    assert (
        trial.data.tags["tipslab.variant"] == "clip" and trial.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
    )
    assert trial.data.params["train.steps"] == "4"
    assert 0 <= trial.data.metrics["eval/scenes/i2t_r1"] <= 100
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "train/loss")][-1] == 4
    # Checkpoints went to the run's storage under TIPSLAB_HOME, which every node of this cluster shares.
    assert str(home / "ray") in trial.data.tags["tipslab.checkpoint"]
