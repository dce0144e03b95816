"""The team tracking server's Kubernetes manifests (infra/mlflow/k8s/).

No Kubernetes schema is available offline (the API server's OpenAPI document is not stored here), so
these tests read the YAML and check what the manifests must get right among themselves: each object
has its kind's required fields, selectors find their pods, the names the server's URIs use are the
Services that exist, and every secret comes from a Secret, never from a literal value.
"""

import yaml
from conftest import REPO

K8S = REPO / "infra" / "mlflow" / "k8s"
REQUIRED = {  # what the API server refuses to create without
    "Service": ["spec.selector", "spec.ports"],
    "Deployment": ["spec.selector.matchLabels", "spec.template.metadata.labels", "spec.template.spec.containers"],
    "StatefulSet": [
        "spec.selector.matchLabels",
        "spec.template.metadata.labels",
        "spec.template.spec.containers",
        "spec.serviceName",
    ],
    "ServiceAccount": [],
}


def objects() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc) and doc["metadata"]["name"], path
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def get(doc: dict, dotted: str):
    for key in dotted.split("."):
        doc = doc[key]
    return doc


def containers() -> list[dict]:
    return [
        c
        for (kind, _), doc in objects().items()
        if kind in ("Deployment", "StatefulSet")
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]


def test_every_object_has_its_required_fields_and_selectors_match():
    found = objects()
    assert set(found) == {
        ("Service", "tipslab-mlflow"),
        ("Deployment", "tipslab-mlflow"),
        ("ServiceAccount", "tipslab-mlflow"),
        ("Service", "tipslab-mlflow-db"),
        ("StatefulSet", "tipslab-mlflow-db"),
    }
    for (kind, name), doc in found.items():
        for field in REQUIRED[kind]:
            assert get(doc, field), f"{kind}/{name}: {field} is empty"
        if kind in ("Deployment", "StatefulSet"):
            assert (
                doc["spec"]["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()
            )
    for name in ("tipslab-mlflow", "tipslab-mlflow-db"):
        pods = next(d for (k, n), d in found.items() if n == name and k != "Service" and k != "ServiceAccount")
        assert (
            found["Service", name]["spec"]["selector"].items() <= pods["spec"]["template"]["metadata"]["labels"].items()
        )


def test_server_uses_postgres_and_s3_and_is_the_uri_the_ray_cluster_logs_to():
    found = objects()
    server = found["Deployment", "tipslab-mlflow"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in server["containers"][0]["env"]}
    backend = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert backend.startswith("postgresql://") and "@tipslab-mlflow-db:5432/" in backend
    assert ":" not in backend.split("://")[1].split("@")[0], "no password inside the backend URI"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert "--serve-artifacts" in server["containers"][0]["args"]
    assert server["serviceAccountName"] in {n for k, n in found if k == "ServiceAccount"}
    port = found["Service", "tipslab-mlflow"]["spec"]["ports"][0]["port"]
    ray_head = yaml.safe_load((REPO / "infra" / "kuberay" / "raycluster.yaml").read_text())
    ray_env = {
        e["name"]: e.get("value") for e in ray_head["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert ray_env["MLFLOW_TRACKING_URI"] == f"http://tipslab-mlflow:{port}"
    assert f"tipslab-mlflow:{port}" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")


def test_secrets_come_from_secrets_only():
    secret_like = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")
    seen = 0
    for container in containers():
        for var in container.get("env", []):
            if any(word in var["name"] for word in secret_like):
                assert "value" not in var and var["valueFrom"]["secretKeyRef"]["key"], var["name"]
                seen += 1
    assert seen == 2  # Postgres' own password and the server's PGPASSWORD, from the same Secret
