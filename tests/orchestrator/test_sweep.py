"""End to end, on a real local Ray instance and a real sqlite MLflow store: the smoke ablation.

procedural scenes -> Ray Data -> Ray Train (CPU, gloo) -> evaluation -> Ray Tune -> MLflow -> table.
"""
import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from tipslab.dashboards.store import load_sweep
from tipslab.dashboards.table import render
from tipslab.orchestrator.errors import UserError
from tipslab.orchestrator.runtime import tracking_uri
from tipslab.orchestrator.spec import load_spec
from tipslab.orchestrator.sweep import concurrency, run_sweep

SMOKE = REPO / "ablations" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke_sweep(ray_session, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIPSLAB_HOME", str(tmp_path_factory.mktemp("smoke") / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        plan = load_spec(SMOKE, smoke=True)
        result = run_sweep(plan)
        uri = tracking_uri()
        yield plan, result, uri


def runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id])
    parents = [r for r in found if r.data.tags.get("tipslab.role") == "sweep"]
    children = [r for r in found if r.data.tags.get("tipslab.role") == "trial"]
    return client, parents, children


def test_store_holds_one_parent_and_a_nested_run_per_variant(smoke_sweep):
    plan, result, uri = smoke_sweep
    assert result.failed == []
    client, parents, children = runs(uri, "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["tipslab.variant"] for r in children) == ["mim_off", "mim_on"]
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        assert {"eval/scenes/i2t_r1", "eval/scenes/t2i_r1", "eval/scenes/seg_miou"} <= set(run.data.metrics)
        assert run.data.params["loss.mim_weight"] == str(float(run.data.tags["tipslab.variant"] == "mim_on") * 0.2)
        trial = next(t for t in plan.trials if t.variant == run.data.tags["tipslab.variant"])
        assert run.data.tags["tipslab.config_hash"] == trial.config_hash
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "eval_results.json"} <= artifacts
        assert run.data.tags["tipslab.checkpoint"]


def test_training_loss_fell_in_every_run(smoke_sweep):
    _, _, uri = smoke_sweep
    client, _, children = runs(uri, "smoke")
    for run in children:
        history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
        assert history[-1].step == 200 and len(history) == 200 // 5
        first, last = history[0].value, history[-1].value
        assert last < first - 0.3, (run.info.run_name, first, last)
        assert "mim" in {m.split("/")[1] for m in run.data.metrics} or run.data.tags["tipslab.variant"] == "mim_off"


def test_retrieval_is_above_chance(smoke_sweep):
    _, _, uri = smoke_sweep
    _, _, children = runs(uri, "smoke")
    chance = 100.0 / 256  # R@1 of a random ranking over the 256 probe-test captions
    for run in children:
        assert run.data.metrics["eval/scenes/i2t_r1"] > 3 * chance, run.info.run_name
        assert run.data.metrics["eval/scenes/t2i_r1"] > 3 * chance, run.info.run_name
        assert 20 < run.data.metrics["eval/scenes/seg_miou"] <= 100


def test_table_from_the_store_alone(smoke_sweep):
    _, result, uri = smoke_sweep
    table = render(load_sweep(uri, "smoke", result.sweep_id))
    assert "| variant | I→T R@1 ↑ | T→I R@1 ↑ | Seg mIoU ↑ |" in table
    assert table.count("| mim_o") == 2 and "–" not in table


def test_concurrency_follows_the_cluster(home):
    plan = load_spec(SMOKE, smoke=True)
    assert concurrency(plan, {"CPU": 2}) == 1  # 1 worker + 1 CPU for Ray Data
    assert concurrency(plan, {"CPU": 8}) == 2  # bounded by the number of trials
    with pytest.raises(UserError, match="needs 2 CPUs"):
        concurrency(plan, {"CPU": 1})
