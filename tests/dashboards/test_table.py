"""The table is built from a real sqlite MLflow store written with MLflow's own client."""

import csv

import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from tipslab.dashboards.store import StoreError, load_sweep
from tipslab.dashboards.table import render

SPEC = {
    "name": "abl",
    "title": "Losses",
    "size": "smoke",
    "baseline": "clip",
    "variants": {"clip": {}, "clip+mim": {}},
    "metrics": [
        {"key": "eval/scenes/i2t_r1", "header": "I→T", "goal": "max"},
        {"key": "eval/scenes/depth_rmse", "header": "RMSE", "goal": "min"},
    ],
    "reference": {"source": "TIPS Table 1", "clip": {"eval/scenes/i2t_r1": 79.1}},
}


def make_store(tmp_path, values: dict, spec=SPEC, sweep_id="s1"):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec["name"])
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(spec["name"], artifact_location=(tmp_path / "art").as_uri())
    )
    parent = client.create_run(exp_id, tags={"tipslab.role": "sweep", "tipslab.sweep_id": sweep_id}).info.run_id
    client.log_dict(parent, spec, "spec.json")
    for (variant, seed), metrics in values.items():
        run = client.create_run(
            exp_id,
            tags={
                "mlflow.parentRunId": parent,
                "tipslab.role": "trial",
                "tipslab.variant": variant,
                "tipslab.seed": str(seed),
            },
        ).info.run_id
        for key, value in metrics.items():
            client.log_metric(run, key, value)
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri


def test_mean_sd_n_over_seeds_paper_column_only_for_its_key_deltas_and_best(tmp_path):
    uri = make_store(
        tmp_path,
        {
            ("clip", 0): {"eval/scenes/i2t_r1": 10.0, "eval/scenes/depth_rmse": 0.5},
            ("clip", 1): {"eval/scenes/i2t_r1": 20.0, "eval/scenes/depth_rmse": 0.7},
            ("clip+mim", 0): {"eval/scenes/i2t_r1": 30.0, "eval/scenes/depth_rmse": 0.4},
        },
    )
    table = render(load_sweep(uri, "abl"))
    lines = table.splitlines()
    assert "| variant | I→T ↑ | Δ [95% CI] | paper | RMSE ↓ | Δ [95% CI] |" in lines
    assert "| clip (baseline) | 15.00 ± 7.07 (n=2) | +0.00 | 79.1 | 0.60 ± 0.14 (n=2) | +0.00 |" in lines
    # RMSE: lower is best; one seed of clip+mim: a difference but no interval
    assert "| clip+mim | **30.00 (n=1)** | +15.00 (n=1: no CI) | – | **0.40 (n=1)** | -0.20 (n=1: no CI) |" in lines
    assert "clip+mim (I→T), clip+mim (RMSE): one seed (n=1) on a side, so no interval can be given" in table
    assert "paper: TIPS Table 1" in table


def test_a_resumed_variant_counts_its_newest_finished_run_once(tmp_path):
    uri = make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 10.0}})
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("abl").experiment_id
    parent = client.search_runs([exp], "tags.`tipslab.role` = 'sweep'")[0].info.run_id
    for value, status in ((40.0, "FINISHED"), (99.0, "KILLED")):  # a rerun after a config change, a dead one
        run = client.create_run(
            exp,
            tags={
                "mlflow.parentRunId": parent,
                "tipslab.role": "trial",
                "tipslab.variant": "clip",
                "tipslab.seed": "0",
            },
        ).info.run_id
        client.log_metric(run, "eval/scenes/i2t_r1", value)
        client.set_terminated(run, status)
    assert "| clip (baseline) | 40.00 (n=1) |" in render(load_sweep(uri, "abl"))


def test_latest_sweep_by_default_and_a_given_one_on_request(tmp_path):
    make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 1.0}}, sweep_id="old")
    uri = make_store(tmp_path, {("clip", 0): {"eval/scenes/i2t_r1": 2.0}}, sweep_id="new")
    assert "| clip (baseline) | 2.00 (n=1) |" in render(load_sweep(uri, "abl"))
    assert "| clip (baseline) | 1.00 (n=1) |" in render(load_sweep(uri, "abl", "old"))


def test_csv_html_and_latex(tmp_path):
    uri = make_store(
        tmp_path,
        {
            ("clip", 0): {"eval/scenes/i2t_r1": 12.5},
            ("clip+mim", 0): {"eval/scenes/i2t_r1": 20.0},
            ("clip+mim", 1): {"eval/scenes/i2t_r1": 22.0},
        },
    )
    sweep = load_sweep(uri, "abl")
    rows = render(sweep, "csv").splitlines()
    i2t, rmse = "eval/scenes/i2t_r1", "eval/scenes/depth_rmse"
    assert rows[0] == ",".join(
        ["variant"]
        + [f"{i2t} {c}" for c in ("mean", "sd", "n", "best", "delta", "ci_low", "ci_high", "real", "better", "paper")]
        + [f"{rmse} {c}" for c in ("mean", "sd", "n", "best", "delta", "ci_low", "ci_high", "real", "better")]
    )
    assert rows[1] == "clip (baseline),12.5,,1,0,0,,,0,,79.1,,,0,0,,,,0,"
    assert rows[2] == "clip+mim,21,1.41421,2,1,8.5,,,0,,,,,0,0,,,,0,"  # n=1 at the baseline: no interval
    html = render(sweep, "html")
    assert "<th>I→T ↑</th><th>Δ [95% CI]</th><th>paper</th>" in html
    assert '<td class="best"><strong>21.00 ± 1.41 (n=2)</strong></td><td>+8.50 (n=1: no CI)</td><td>–</td>' in html
    latex = render(sweep, "latex")
    assert r"clip+mim & \textbf{21.00 $\pm$ 1.41 (n=2)} & +8.50 (n=1: no CI) & -- & -- (n=0) & -- \\" in latex
    assert r"\begin{tabular}{lccccc}" in latex and latex.rstrip().endswith(r"\end{table}")


# Five seeds each: clip+mim is the baseline +3 on I→T (sd about 0.3) and worse on RMSE (lower is
# better); clip+null is drawn like the baseline on both.
BASE, REAL, NULL = [70.1, 69.6, 70.4, 69.8, 70.2], [73.4, 72.6, 73.1, 72.9, 73.3], [70.3, 69.7, 69.9, 70.5, 69.8]
RMSE_BASE, RMSE_WORSE = [0.50, 0.52, 0.49, 0.51, 0.50], [0.60, 0.62, 0.59, 0.61, 0.63]
PLANTED = dict(SPEC, variants={"clip": {}, "clip+mim": {}, "clip+null": {}})


def planted_store(tmp_path):
    values = {}
    for seed in range(5):
        values[("clip", seed)] = {"eval/scenes/i2t_r1": BASE[seed], "eval/scenes/depth_rmse": RMSE_BASE[seed]}
        values[("clip+mim", seed)] = {"eval/scenes/i2t_r1": REAL[seed], "eval/scenes/depth_rmse": RMSE_WORSE[seed]}
        values[("clip+null", seed)] = {"eval/scenes/i2t_r1": NULL[seed], "eval/scenes/depth_rmse": RMSE_BASE[4 - seed]}
    return make_store(tmp_path, values, PLANTED)


def test_a_planted_real_difference_is_marked_and_a_planted_null_one_is_not(tmp_path):
    sweep = load_sweep(planted_store(tmp_path), "abl")
    lines = render(sweep).splitlines()
    assert (
        "| clip+mim | **73.06 ± 0.32 (n=5)** | +3.04 [+2.57, +3.51] * better | – "
        "| 0.61 ± 0.02 (n=5) | +0.11 [+0.09, +0.13] * worse |"
    ) in lines  # RMSE up: real, and worse
    assert (
        "| clip+null | 70.04 ± 0.34 (n=5) | +0.02 [-0.46, +0.50] | – | **0.50 ± 0.01 (n=5)** | +0.00 [-0.02, +0.02] |"
    ) in lines
    note = next(line for line in lines if line.startswith("Δ [95% CI]:"))
    assert (
        "Welch's t" in note
        and "95%" in note
        and "two-sided" in note
        and "* marks an interval that excludes zero" in note
    )
    assert "no interval can be given" not in "\n".join(lines)  # every row has 5 seeds

    # The csv's numbers are scipy's Welch test of the same seeds.
    rows = {r["variant"]: r for r in csv.DictReader(render(sweep, "csv").splitlines())}
    for variant, sample, key, real, better in (
        ("clip+mim", REAL, "eval/scenes/i2t_r1", "1", "1"),
        ("clip+mim", RMSE_WORSE, "eval/scenes/depth_rmse", "1", "0"),
        ("clip+null", NULL, "eval/scenes/i2t_r1", "0", ""),
    ):
        base = BASE if key.endswith("i2t_r1") else RMSE_BASE
        ci = stats.ttest_ind(sample, base, equal_var=False).confidence_interval(0.95)
        row = rows[variant]
        assert float(row[f"{key} ci_low"]) == pytest.approx(float(ci.low), rel=1e-5)
        assert float(row[f"{key} ci_high"]) == pytest.approx(float(ci.high), rel=1e-5)
        assert (row[f"{key} n"], row[f"{key} real"], row[f"{key} better"]) == ("5", real, better)

    html = render(sweep, "html")
    assert '<td class="real"><strong>+3.04 [+2.57, +3.51] * better</strong></td>' in html
    assert "<td>+0.02 [-0.46, +0.50]</td>" in html and "Welch&#x27;s t" in html
    latex = render(sweep, "latex")
    assert r"clip+null & 70.04 $\pm$ 0.34 (n=5) & +0.02 [-0.46, +0.50] & -- & " in latex
    assert r"& +3.04 [+2.57, +3.51] * better &" in latex and r"95\% confidence interval of Welch's t" in latex


def test_no_spread_on_either_side_gives_no_interval_and_says_why(tmp_path):
    uri = make_store(
        tmp_path,
        {("clip", s): {"eval/scenes/i2t_r1": 50.0} for s in range(3)}
        | {("clip+mim", s): {"eval/scenes/i2t_r1": 52.0} for s in range(3)},
    )
    table = render(load_sweep(uri, "abl"))
    assert "| clip+mim | **52.00 ± 0.00 (n=3)** | +2.00 (no spread: no CI) |" in table
    assert "clip+mim (I→T): every seed gave the same value on both sides" in table
    assert "* better" not in table and "* worse" not in table


def test_a_value_that_is_not_a_number_is_left_out_and_named(tmp_path):
    uri = make_store(
        tmp_path,
        {
            ("clip", 0): {"eval/scenes/i2t_r1": 50.0},
            ("clip", 1): {"eval/scenes/i2t_r1": 51.0},
            ("clip+mim", 0): {"eval/scenes/i2t_r1": 53.0},
            ("clip+mim", 1): {"eval/scenes/i2t_r1": float("nan")},  # a diverged run
            ("clip+mim", 2): {"eval/scenes/i2t_r1": 54.0},
        },
    )
    table = render(load_sweep(uri, "abl"))
    assert "| clip+mim | **53.50 ± 0.71 (n=2)** | +3.00 [" in table
    assert "not counted in n, means or intervals: clip+mim seed 1 (I→T: nan)" in table


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


def test_a_column_names_its_protocol_and_runs_that_differ_are_called_mixed(tmp_path):
    uri = make_store(
        tmp_path,
        {("clip", 0): {"eval/scenes/i2t_r1": 1.0, "eval/scenes/depth_rmse": 0.5}, ("clip", 1): {}},
    )
    client = MlflowClient(uri)
    runs = {r.data.tags["tipslab.seed"]: r.info.run_id for r in client.search_runs(["1"], "tags.`tipslab.seed` != ''")}
    for seed, protocol in (("0", "dinov2_linear: bins=256"), ("1", "scenes_bins: bins=256")):
        client.set_tag(runs[seed], "tipslab.protocol.eval/scenes/depth_rmse", protocol)
        client.set_tag(runs[seed], "tipslab.protocol.eval/scenes/i2t_r1", "cosine_recall: token=cls_web")
    table = render(load_sweep(uri, "abl"))
    assert "protocol of I→T: cosine_recall: token=cls_web" in table.splitlines()
    assert "protocol of RMSE: mixed, dinov2_linear: bins=256 (n=1), scenes_bins: bins=256 (n=1)" in table.splitlines()
    assert "protocol of" not in render(load_sweep(make_store(tmp_path / "old", {("clip", 0): {}}), "abl"))
