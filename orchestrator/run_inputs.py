"""What a trial's MLflow run records as its inputs: the training shards (digest: the manifest's
content hash) and the SentencePiece tokenizer (digest: the file's sha256), both part of its config
hash."""

import json

from mlflow.entities import Dataset, DatasetInput, InputTag

from tipslab.jobs.redact import redact

from .config import file_sha256, manifest_of
from .run_tags import DATA_HASH, TOKENIZER_HASH


def log_run_inputs(client, run_id: str, config: dict) -> None:
    """The training shards as the run's input dataset (digest: the manifest's content hash), and
    the SentencePiece tokenizer as another (digest: the file's sha256, also the tag
    tipslab.tokenizer_sha256); both are part of the trial's config hash."""
    _log_tokenizer(client, run_id, config)
    data = config["data"]
    manifest = manifest_of(data["root"], data["train_split"])
    if manifest is None:
        return
    digest = manifest["content_hash"]
    dataset = Dataset(
        name=redact(f"{data['source']}/{data['train_split']}"),
        digest=digest[:36],
        source_type="tipslab-shards",
        source=redact(f"{data['root']}/{data['train_split']}"),
        profile=json.dumps(
            {"content_hash": digest, "num_rows": manifest["num_rows"], "shard_source": redact(manifest["source"])}
        ),
    )
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])
    client.set_tag(run_id, DATA_HASH, digest)


def _log_tokenizer(client, run_id: str, config: dict) -> None:
    model = config.get("model", {})
    path = model.get("tokenizer", "hash")
    digest = file_sha256(path)
    if digest is None:  # the hash tokenizer: nothing prepared, nothing to record
        return
    dataset = Dataset(
        name="tokenizer",
        digest=digest[:36],
        source_type="tipslab-tokenizer",
        source=redact(path),
        profile=json.dumps({"sha256": digest, "vocab_size": model.get("vocab_size")}),
    )
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "tokenizer")])])
    client.set_tag(run_id, TOKENIZER_HASH, digest)
