"""Secrets never leave, and the user sees the sweep's progress while it trains: one real
`tipslab sweep` of one tiny trial in a pseudo-terminal (its own local Ray instance, which inherits
planted credentials as a cluster's nodes would have them), tracked on a real MLflow server reached
through a URI with a user and password. Its step lines (with a loss and images/s) must arrive while
it runs, before its table, without Tune's own noise; then every place a secret could land (the
console, Ray's logs, MLflow's runs and artifacts, the checkpoints) is read back: credentials planted
in the tracking URI, in the AWS variables and in an oddly named variable that a spec interpolates
appear in none of them.
"""

import json
import os
import re
import time
from pathlib import Path

from conftest import REPO, tiny_overrides
from mlflow.tracking import MlflowClient
from terminal import in_a_terminal
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


def test_a_sweep_in_a_terminal_shows_its_progress_and_no_planted_secret_anywhere(mlflow_server, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    tracking = mlflow_server.replace("http://", f"http://tipslab:{PASSWORD}@")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray instance
    env.update(PLANTED, TIPSLAB_HOME=str(home), MLFLOW_TRACKING_URI=tracking)
    overrides = tiny_overrides(
        **{"train.steps": 4, "data.scenes_train": 16, "data.scenes_probe": 8, "eval.probes": "[retrieval]"}
    )
    env["PYTHONUNBUFFERED"] = "1"
    # nice: the sweep yields the CPUs to this test's MLflow server
    code, pieces = in_a_terminal(["sweep", str(spec), *overrides], env, timeout_s=1500, prefix=["nice", "-n", "19"])
    ended = time.monotonic()
    console = "\n".join(line for _, line, _ in pieces)
    assert code == 0, console[-3000:]
    assert f"in http://tipslab:***@{mlflow_server[len('http://') :]}" in console  # the final line, masked

    # Progress: step lines while it trains, before the table; none of Tune's own output.
    steps = [(when, line) for when, line, _ in pieces if " step " in line and "/4 (" in line]
    assert steps, console[-3000:]
    first_time, first = steps[0]
    assert " loss " in first and " img/s" in first, first
    table = next(when for when, line, _ in pieces if line.startswith("| odd"))
    assert first_time < table and first_time < ended - 1.0  # while it ran, not only at the end
    assert any("step 4/4 (100%)" in line for _, line in steps)
    assert "TensorBoard" not in console and "View detailed results" not in console
    assert "Token authentication" not in console and "Started a local Ray instance" not in console

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
