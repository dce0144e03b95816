"""Secrets never leave: credentials planted in the tracking URI, in the AWS variables and in an
oddly named variable that a spec interpolates appear in nothing a sweep prints, logs or writes.

One `tipslab sweep` of one tiny trial (its own local Ray instance, which inherits the planted
variables as a cluster's nodes would have them), tracked on a real MLflow server reached through
a URI with a user and password; then every place a secret could land is read back.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, tiny_overrides
from mlflow.tracking import MlflowClient
from test_sweep import mlflow_server  # noqa: F401  (the fixture)

TINY = REPO / "ablations" / "base" / "tips_tiny.yaml"
ODD = "s3cr3tvalue123xyz"  # in a variable whose name says nothing of a secret
PLANTED = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY0000042",
    "AWS_SECRET_ACCESS_KEY": "plantedSecret/abc+XYZ0123456789",
    "AWS_SESSION_TOKEN": "planted-session-token-0123456789",
    "WANDB_API_KEY": "wandb-planted-0123456789abcdef",
    "TIPSLAB_TEST_ODDLY_NAMED": ODD,
}
PASSWORD = "pl4ntedPassw0rd"
SPEC = f"""name: secrets-e2e
title: "secrets e2e for ${{oc.env:TIPSLAB_TEST_ODDLY_NAMED}}"
base: {TINY}
variants:
  odd: {{eval.dataset: "${{oc.env:TIPSLAB_TEST_ODDLY_NAMED}}"}}
"""


def files_under(folder: Path):
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                yield path


def leaks(blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    secrets = {**PLANTED, "password": PASSWORD}
    return [(where, name) for where, blob in blobs.items() for name, v in secrets.items() if v.encode() in blob]


def test_no_planted_secret_in_console_ray_logs_mlflow_artifacts_or_checkpoints(mlflow_server, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    tracking = mlflow_server.replace("http://", f"http://tipslab:{PASSWORD}@")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray instance
    env.update(PLANTED, TIPSLAB_HOME=str(home), MLFLOW_TRACKING_URI=tracking)
    overrides = tiny_overrides(
        **{"train.steps": 2, "data.scenes_train": 16, "data.scenes_probe": 8, "eval.probes": "[retrieval]"}
    )
    log = tmp_path / "console.log"
    with open(log, "w") as out:
        done = subprocess.run(
            ["nice", "-n", "19", sys.executable, "-m", "tipslab.orchestrator.cli", "sweep", str(spec), *overrides],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1500,
        )
    console = log.read_text()
    assert done.returncode == 0, console[-3000:]
    assert f"in http://tipslab:***@{mlflow_server[len('http://') :]}" in console  # the final line, masked

    blobs = {"console": console.encode()}
    # Ray's logs: the sweep says where they are.
    logs = Path(re.search(r"worker logs (\S+)", console)[1])
    ray_files = list(files_under(logs))
    assert any(p.name == "runtime_env_agent.log" for p in ray_files)
    blobs.update({f"ray:{p.name}": p.read_bytes() for p in ray_files})
    # Everything under the run's home: checkpoints (model.pt), evaluation outputs, Tune's files.
    home_files = list(files_under(home))
    assert any(p.name == "model.pt" for p in home_files) and any(p.name == "tuner.pkl" for p in home_files)
    blobs.update({f"home:{p.relative_to(home)}": p.read_bytes() for p in home_files})

    # MLflow, read back through the tracking server.
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("secrets-e2e")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2  # the parent and its one trial
    for run in runs:
        rid = run.info.run_id
        blobs[f"mlflow:{rid}:info"] = json.dumps(
            [run.info.run_name, run.data.params, run.data.tags, sorted(run.data.metrics)]
        ).encode()
        blobs[f"mlflow:{rid}:inputs"] = str(run.inputs.dataset_inputs if run.inputs else "").encode()
        local = Path(client.download_artifacts(rid, "", str(tmp_path / "artifacts" / rid)))
        blobs.update({f"mlflow:{rid}:{p.name}": p.read_bytes() for p in files_under(local)})

    trial = next(r for r in runs if r.data.tags.get("tipslab.role") == "trial")
    parent = next(r for r in runs if r.data.tags.get("tipslab.role") == "sweep")
    # The secret went through every path, masked: the evidence that the scan read what it should.
    assert parent.data.tags["mlflow.note.content"] == "secrets e2e for ***"
    assert trial.data.params["eval.dataset"] == "***"
    assert "eval/masked/i2t_r1" in trial.data.metrics  # MLflow's names take no `*`
    artifacts = {a.path for a in client.list_artifacts(trial.info.run_id)}
    assert {"config.json", "eval_results.json", "features.npz"} <= artifacts
    assert sum(map(len, blobs.values())) > 100_000
    assert leaks(blobs) == []
