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


def test_mean_sd_n_over_seeds_paper_column_only_for_its_key_deltas_and_best(tmp_path):
    uri = make_store(tmp_path, {
        ("clip", 0): {"eval/scenes/i2t_r1": 10.0, "eval/scenes/depth_rmse": 0.5},
        ("clip", 1): {"eval/scenes/i2t_r1": 20.0, "eval/scenes/depth_rmse": 0.7},
        ("clip+mim", 0): {"eval/scenes/i2t_r1": 30.0, "eval/scenes/depth_rmse": 0.4},
    })
    table = render(load_sweep(uri, "abl"))
    lines = table.splitlines()
    assert "| variant | I→T ↑ | Δ | paper | RMSE ↓ | Δ |" in lines
    assert "| clip (baseline) | 15.00 ± 7.07 (n=2) | +0.00 | 79.1 | 0.60 ± 0.14 (n=2) | +0.00 |" in lines
    assert "| clip+mim | **30.00** | +15.00 | – | **0.40** | -0.20 |" in lines  # RMSE: lower is best
    assert "paper: TIPS Table 1" in table


def test_a_resumed_variant_counts_its_newest_finished_run_once(tmp_path):
    uri = make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 10.0}})
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("abl").experiment_id
    parent = client.search_runs([exp], "tags.`tipslab.role` = 'sweep'")[0].info.run_id
    for value, status in ((40.0, "FINISHED"), (99.0, "KILLED")):  # a rerun after a config change, a dead one
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "tipslab.role": "trial",
                                           "tipslab.variant": "clip", "tipslab.seed": "0"}).info.run_id
        client.log_metric(run, "eval/scenes/i2t_r1", value)
        client.set_terminated(run, status)
    assert "| clip (baseline) | 40.00 |" in render(load_sweep(uri, "abl"))


def test_latest_sweep_by_default_and_a_given_one_on_request(tmp_path):
    make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 1.0}}, sweep_id="old")
    uri = make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 2.0}}, sweep_id="new")
    assert "| clip (baseline) | 2.00 |" in render(load_sweep(uri, "abl"))
    assert "| clip (baseline) | 1.00 |" in render(load_sweep(uri, "abl", "old"))


def test_csv_html_and_latex(tmp_path):
    uri = make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 12.5}, ("clip+mim", 0): {"eval/scenes/i2t_r1": 20.0},
                                ("clip+mim", 1): {"eval/scenes/i2t_r1": 22.0}})
    sweep = load_sweep(uri, "abl")
    rows = render(sweep, "csv").splitlines()
    assert rows[0] == ("variant,eval/scenes/i2t_r1 mean,eval/scenes/i2t_r1 sd,eval/scenes/i2t_r1 n,eval/scenes/i2t_r1 best,"
                       "eval/scenes/i2t_r1 delta,eval/scenes/i2t_r1 paper,eval/scenes/depth_rmse mean,"
                       "eval/scenes/depth_rmse sd,eval/scenes/depth_rmse n,eval/scenes/depth_rmse best,"
                       "eval/scenes/depth_rmse delta")
    assert rows[1] == "clip (baseline),12.5,,1,0,0,79.1,,,0,0,"
    assert rows[2] == "clip+mim,21,1.41421,2,1,8.5,,,,0,0,"
    html = render(sweep, "html")
    assert "<th>I→T ↑</th><th>Δ</th><th>paper</th>" in html
    assert '<td class="best"><strong>21.00 ± 1.41 (n=2)</strong></td><td>+8.50</td><td>–</td>' in html
    latex = render(sweep, "latex")
    assert r"clip+mim & \textbf{21.00 $\pm$ 1.41 (n=2)} & +8.50 & -- & -- & -- \\" in latex
    assert r"\begin{tabular}{lccccc}" in latex and latex.rstrip().endswith(r"\end{table}")


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
