"""The table is built from a real sqlite MLflow store written with MLflow's own client."""
import pytest
from mlflow.tracking import MlflowClient

from tipslab.dashboards.store import StoreError, load_sweep
from tipslab.dashboards.table import render

SPEC = {
    "name": "abl", "title": "Losses", "size": "smoke", "baseline": "clip",
    "variants": {"clip": {}, "clip+mim": {}},
    "metrics": [{"key": "eval/scenes/i2t_r1", "header": "I→T", "goal": "max"},
                {"key": "eval/scenes/depth_rmse", "header": "RMSE", "goal": "min"}],
    "reference": {"source": "TIPS Table 1", "clip": {"eval/scenes/i2t_r1": 79.1}},
}


def make_store(tmp_path, values: dict, spec=SPEC, sweep_id="s1"):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec["name"])
    exp_id = exp.experiment_id if exp else client.create_experiment(spec["name"], artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp_id, tags={"tipslab.role": "sweep", "tipslab.sweep_id": sweep_id}).info.run_id
    client.log_dict(parent, spec, "spec.json")
    for (variant, seed), metrics in values.items():
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "tipslab.role": "trial",
                                              "tipslab.variant": variant, "tipslab.seed": str(seed)}).info.run_id
        for key, value in metrics.items():
            client.log_metric(run, key, value)
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri


def test_mean_sd_n_over_seeds_and_paper_column_only_for_its_key(tmp_path):
    uri = make_store(tmp_path, {
        ("clip", 0): {"eval/scenes/i2t_r1": 10.0, "eval/scenes/depth_rmse": 0.5},
        ("clip", 1): {"eval/scenes/i2t_r1": 20.0, "eval/scenes/depth_rmse": 0.7},
        ("clip+mim", 0): {"eval/scenes/i2t_r1": 30.0},
    })
    table = render(load_sweep(uri, "abl"))
    lines = table.splitlines()
    assert "| variant | I→T ↑ | paper | RMSE ↓ |" in lines
    assert "| clip (baseline) | 15.00 ± 7.07 (2) | 79.1 | 0.60 ± 0.14 (2) |" in lines
    assert "| clip+mim | 30.00 | – | – |" in lines
    assert "paper: TIPS Table 1" in table


def test_latest_sweep_by_default_and_a_given_one_on_request(tmp_path):
    make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 1.0}}, sweep_id="old")
    uri = make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 2.0}}, sweep_id="new")
    assert "| clip (baseline) | 2.00 |" in render(load_sweep(uri, "abl"))
    assert "| clip (baseline) | 1.00 |" in render(load_sweep(uri, "abl", "old"))


def test_csv_format(tmp_path):
    uri = make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 12.5}})
    rows = render(load_sweep(uri, "abl"), "csv").splitlines()
    assert rows[0] == "variant,I→T ↑,paper,RMSE ↓"
    assert rows[1] == "clip (baseline),12.50,79.1,–"


def test_unknown_experiment_or_sweep_or_store(tmp_path):
    uri = make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 1.0}})
    with pytest.raises(StoreError, match="no experiment 'other'"):
        load_sweep(uri, "other")
    with pytest.raises(StoreError, match="no sweep nope"):
        load_sweep(uri, "abl", "nope")
    missing = f"sqlite:///{tmp_path / 'absent.db'}"
    with pytest.raises(StoreError, match="no MLflow store"):
        load_sweep(missing, "abl")
    assert not (tmp_path / "absent.db").exists()  # reading never creates a store
