"""The names tipslab's MLflow runs are found by (tags of sweeps and trials), the experiments they
go to, and the comparison view that MLflow's UI opens an ablation's experiment with."""

from mlflow.tracking import MlflowClient

from tipslab.dashboards.store import STORE_ARTIFACTS, use_store_artifacts

ROLE, SWEEP_ID, SPEC, SIZE = "tipslab.role", "tipslab.sweep_id", "tipslab.spec", "tipslab.size"
VARIANT, SEED, CONFIG_HASH, CHECKPOINT = "tipslab.variant", "tipslab.seed", "tipslab.config_hash", "tipslab.checkpoint"
AXIS, DATA_HASH, TOKENIZER_HASH = "tipslab.axis.", "tipslab.data_hash", "tipslab.tokenizer_sha256"
BAD_ROWS = "tipslab.bad_rows"
# A trial's Ray Train run folder (under the run storage) and the note of a resume that closed the
# run its dead driver had left RUNNING: a resumed sweep goes on in that run when the folder matches.
TRAIN_RUN, CLOSED_BY = "tipslab.train_run", "tipslab.closed_by"
# The comparison view of an experiment, as MLflow's UI shares views (an experiment tag holding the
# runs table's state, opened by `?viewStateShareKey=`): runs grouped by variant (metric columns as
# means over seeds), the spec's metrics and the keys its variants change as columns.
VIEW_KEY = "tipslab"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY


def comparison_view(spec: dict) -> dict:
    """The runs table's state for MLflow's UI (the fields of its shared views)."""
    changed = dict.fromkeys(k for v in (spec.get("variants") or {}).values() for k in (v or {}))
    columns = [f"metrics.`{m['key']}`" for m in spec.get("metrics", [])] + [f"params.`{k}`" for k in changed]
    return {
        "selectedColumns": columns + [f"tags.`{SEED}`"],
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": VARIANT}]},
        "searchFilter": f"tags.`{ROLE}` = 'trial'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }


# MLflow 3's UI opens an experiment without this tag in GenAI mode (traces, "Evaluations"); ours are
# training runs. The values are MLflow's (its UI's ExperimentKind).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment `name`, of the ML kind, created if new: on an embedded store with
    its artifacts under `mlflow-artifacts:/<name>` (the store's own `mlartifacts` folder, wherever
    the store lies); a tracking server puts them where it was told to. This process then resolves
    those URIs in the store's folder (use_store_artifacts): whoever writes a run's artifacts gets
    its experiment here first."""
    use_store_artifacts()
    found = client.get_experiment_by_name(name)
    if found is None:
        server = client.tracking_uri.startswith(("http://", "https://"))
        location = None if server else f"{STORE_ARTIFACTS}{name}"
        return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
    if EXPERIMENT_KIND[0] not in found.tags:  # made before tipslab set the kind
        client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
    return found.experiment_id
