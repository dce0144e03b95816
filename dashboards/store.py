"""Reading sweeps back from an MLflow tracking store (nothing else is read)."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

ROLE, SWEEP_ID, VARIANT, SEED = "tipslab.role", "tipslab.sweep_id", "tipslab.variant", "tipslab.seed"
SIZE, CONFIG_HASH, AXIS = "tipslab.size", "tipslab.config_hash", "tipslab.axis."
PROTOCOL = "tipslab.protocol."  # + a metric key: the protocol that made the number (a trial's tag)


class StoreError(LookupError):
    """The experiment or sweep asked for is not in the store."""


@dataclass
class TrialRun:
    variant: str
    seed: int
    status: str
    metrics: dict
    run_id: str = ""
    tags: dict = field(default_factory=dict)


@dataclass
class Sweep:
    experiment: str
    sweep_id: str
    status: str
    spec: dict
    trials: list[TrialRun]  # every nested run, newest first
    tracking_uri: str = ""
    parent_run_id: str = ""

    def finished(self) -> list[TrialRun]:
        """The newest FINISHED run of each (variant, seed): older ones were superseded by a resume
        after the variant's config changed."""
        seen, out = set(), []
        for t in self.trials:
            if t.status == "FINISHED" and (t.variant, t.seed) not in seen:
                seen.add((t.variant, t.seed))
                out.append(t)
        return out


# Artifacts relative to the store: experiments of an embedded store get the artifact location
# `mlflow-artifacts:/<name>`, a URI that names no folder. `tipslab ui` serves it from the store's
# `mlartifacts` folder (`mlflow server --serve-artifacts`), and tipslab's own clients resolve it there
# (below), so the store stays readable when its folder moves or is mounted elsewhere.
STORE_ARTIFACTS = "mlflow-artifacts:/"
ARTIFACTS_DIR = "mlartifacts"


def store_artifact_root(tracking_uri: str) -> Path | None:
    """The artifacts folder of a sqlite store: `mlartifacts` beside its database file."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :]).resolve().parent / ARTIFACTS_DIR


def _store_artifacts_repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    """`mlflow-artifacts:/x` on a sqlite store: the folder `<store>/mlartifacts/x`; against a tracking
    server: MLflow's own proxy client, as without tipslab."""
    import mlflow
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    root = store_artifact_root(tracking_uri)
    if root is None:
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    folder = root / urlparse(artifact_uri).path.lstrip("/")
    return LocalArtifactRepository(folder.as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri)


def use_store_artifacts() -> None:
    """Resolve `mlflow-artifacts:` URIs against the store's folder in this process (idempotent)."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register("mlflow-artifacts", _store_artifacts_repository)


def client_for(tracking_uri: str) -> MlflowClient:
    use_store_artifacts()
    if tracking_uri.startswith("sqlite:///") and not os.path.exists(tracking_uri[len("sqlite:///") :]):
        raise StoreError(f"no MLflow store at {tracking_uri}: run a sweep first, or set MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri)


def load_sweep(tracking_uri: str, experiment: str, sweep_id: str | None = None, size: str | None = None) -> Sweep:
    """The given sweep of an experiment, or its latest one (of `size`: full, mini or smoke, when given)."""
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise StoreError(f"no experiment {experiment!r} in {tracking_uri} (experiments: {names})")
    query = (
        f"tags.`{ROLE}` = 'sweep'"
        + (f" and tags.`{SWEEP_ID}` = '{sweep_id}'" if sweep_id else "")
        + (f" and tags.`{SIZE}` = '{size}'" if size else "")
    )
    parents = client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise StoreError(
            f"no{' ' + size if size else ''} sweep{' ' + sweep_id if sweep_id else ''} in experiment {experiment!r}"
        )
    parent = parents[0]
    with open(client.download_artifacts(parent.info.run_id, "spec.json")) as f:
        spec = json.load(f)
    children = client.search_runs(
        [exp.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=50000,
    )
    trials = [
        TrialRun(
            r.data.tags.get(VARIANT, "?"),
            int(r.data.tags.get(SEED, 0)),
            r.info.status,
            r.data.metrics,
            r.info.run_id,
            r.data.tags,
        )
        for r in children
    ]
    return Sweep(
        experiment, parent.data.tags[SWEEP_ID], parent.info.status, spec, trials, tracking_uri, parent.info.run_id
    )


def metric_history(sweep: Sweep, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, in step order."""
    history = client_for(sweep.tracking_uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def run_artifact(sweep: Sweep, run_id: str, path: str) -> str | None:
    """A local copy of one artifact of a run, or None when the run has none by that name."""
    client = client_for(sweep.tracking_uri)
    folder, _, name = path.rpartition("/")
    if name not in {a.path.rpartition("/")[2] for a in client.list_artifacts(run_id, folder or None)}:
        return None
    return client.download_artifacts(run_id, path)
