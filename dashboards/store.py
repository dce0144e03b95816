"""Reading sweeps back from an MLflow tracking store (nothing else is read)."""
import json
import os
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

ROLE, SWEEP_ID, VARIANT, SEED = "tipslab.role", "tipslab.sweep_id", "tipslab.variant", "tipslab.seed"


class StoreError(LookupError):
    """The experiment or sweep asked for is not in the store."""


@dataclass
class TrialRun:
    variant: str
    seed: int
    status: str
    metrics: dict


@dataclass
class Sweep:
    experiment: str
    sweep_id: str
    status: str
    spec: dict
    trials: list[TrialRun]


def load_sweep(tracking_uri: str, experiment: str, sweep_id: str | None = None) -> Sweep:
    """The given sweep of an experiment, or its latest one."""
    if tracking_uri.startswith("sqlite:///") and not os.path.exists(tracking_uri[len("sqlite:///"):]):
        raise StoreError(f"no MLflow store at {tracking_uri}: run a sweep first, or set MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise StoreError(f"no experiment {experiment!r} in {tracking_uri} (experiments: {names})")
    query = f"tags.`{ROLE}` = 'sweep'" + (f" and tags.`{SWEEP_ID}` = '{sweep_id}'" if sweep_id else "")
    parents = client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise StoreError(f"no sweep{' ' + sweep_id if sweep_id else ''} in experiment {experiment!r}")
    parent = parents[0]
    with open(client.download_artifacts(parent.info.run_id, "spec.json")) as f:
        spec = json.load(f)
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=10000)
    trials = [TrialRun(r.data.tags.get(VARIANT, "?"), int(r.data.tags.get(SEED, 0)), r.info.status, r.data.metrics)
              for r in children]
    return Sweep(experiment, parent.data.tags[SWEEP_ID], parent.info.status, spec, trials)
