"""MLflow writes outside sweeps: a `tipslab bench` run in `tipslab-bench` (where `tipslab plan`
reads it) and `tipslab eval --run` appending an evaluation to a finished training run."""

import json
import time

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tipslab.jobs.redact import redact, redact_name, scrub

from .plan import BENCH, BENCH_EXPERIMENT, DEVICE_KIND, MODEL_SIZE
from .run_context import PROTOCOLS, code_version, git_tags, tag_protocols
from .run_tags import experiment_id

DEVICE = "tipslab.device"  # beside the bench tags that `tipslab plan` reads (orchestrator/plan.py)


def log_bench(tracking_uri: str, bench: str, model_size: str, result: dict, metrics: dict, params: dict) -> str:
    """One FINISHED run of `tipslab bench` in `tipslab-bench`, where `tipslab plan` reads it; returns
    its id. Metrics `bench/<bench>/*`; the result itself is its `bench.json`."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        experiment_id(client, BENCH_EXPERIMENT),
        run_name=f"{bench}-{model_size}-{result['device_kind']}",
        tags={
            BENCH: bench,
            MODEL_SIZE: model_size,
            DEVICE_KIND: result["device_kind"],
            DEVICE: result["device"],
            "tipslab.code_version": code_version(),
            **git_tags(),
        },
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(redact_name(f"bench/{bench}/{k}"), float(v), now, 0) for k, v in metrics.items() if v is not None
        ],
        params=[Param(k, redact(v)[:6000]) for k, v in params.items()],
    )
    client.log_dict(run_id, scrub(result), "bench.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def append_eval(
    client: MlflowClient,
    run_id: str,
    metrics: dict,
    results_file: str,
    features: str | None,
    protocols: dict | None = None,
) -> None:
    """`tipslab eval --run`: eval/* metrics at the run's last training step, its eval results file
    merged with them and with the probes' protocols (also as tags), and the features file (if any)
    beside them."""
    import tempfile

    run = client.get_run(run_id)
    step, now = int(run.data.params.get("train.steps", 0)), int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(redact_name(k), v, now, step) for k, v in metrics.items()])
    merged = {}
    with tempfile.TemporaryDirectory() as tmp:
        if any(a.path == results_file for a in client.list_artifacts(run_id)):
            with open(client.download_artifacts(run_id, results_file, tmp)) as f:
                merged = json.load(f)
    protocols = protocols or {}
    merged_protocols = {**merged.pop(PROTOCOLS, {}), **protocols}
    client.log_dict(
        run_id,
        scrub({**merged, **metrics, **({PROTOCOLS: merged_protocols} if merged_protocols else {})}),
        results_file,
    )
    tag_protocols(client, run_id, protocols)
    if features:
        client.log_artifact(run_id, features)
