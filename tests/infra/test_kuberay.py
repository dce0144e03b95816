"""The KubeRay manifests, validated against KubeRay's own CRD schemas (no cluster needed).

The CRDs live outside the project (`../shared/fixtures/kuberay/`); in a clone without them these
tests are skipped, saying so.
"""

import copy

import pytest
import yaml
from conftest import REPO, SHARED
from kube_schema import crd_schema, errors

CRDS = SHARED / "fixtures" / "kuberay"
KUBERAY = REPO / "infra" / "kuberay"

pytestmark = pytest.mark.skipif(
    not (CRDS / "ray.io_rayclusters.yaml").is_file(),
    reason=f"KubeRay's CRD schemas are not at {CRDS} (they are not part of the project)",
)


@pytest.fixture(scope="module")
def schemas():
    return {
        "RayCluster": crd_schema(CRDS / "ray.io_rayclusters.yaml"),
        "RayJob": crd_schema(CRDS / "ray.io_rayjobs.yaml"),
    }


def manifest(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def ray_pin() -> str:
    pyproject = (REPO / "pyproject.toml").read_text()
    return pyproject.split('"ray[default,train,tune,data]==')[1].split('"')[0]


def test_raycluster_is_valid_and_shaped_for_training(schemas):
    cluster = manifest("raycluster.yaml")
    assert errors(cluster, schemas["RayCluster"]) == []
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray_pin()
    assert spec["authOptions"] == {"mode": "token", "secretName": "tipslab-ray-token"}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = containers(groups["gpu"]["template"])[0]["resources"]
    data = containers(groups["data"]["template"])[0]["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) >= 1 and "nvidia.com/gpu" not in data["limits"]
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in groups.values()]
    images = {c["image"] for pod in pods for c in containers(pod)}
    assert len(images) == 1 and images.pop().endswith("/tipslab:0.1.0")
    # Credentials come from Secrets and service accounts, never from literal values in the manifest.
    env_names = {e["name"] for pod in pods for c in containers(pod) for e in c.get("env", [])}
    assert not env_names & {"RAY_AUTH_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert {pod["spec"]["serviceAccountName"] for pod in pods} == {"tipslab-ray"}


def test_rayjob_is_valid_and_runs_a_sweep_on_the_cluster(schemas):
    job, cluster = manifest("rayjob.yaml"), manifest("raycluster.yaml")
    assert errors(job, schemas["RayJob"]) == []
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    command = spec["entrypoint"].split()
    assert command[:2] == ["tipslab", "sweep"] and (REPO / command[2]).is_file()
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "pip" not in runtime_env and not any(k.startswith("AWS_") for k in runtime_env["env_vars"])
    submitter = containers(spec["submitterPodTemplate"])[0]
    token = next(e for e in submitter["env"] if e["name"] == "RAY_AUTH_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": cluster["spec"]["authOptions"]["secretName"],
        "key": "auth_token",
    }


def test_schema_rejects_misspelled_and_invalid_fields(schemas):
    cluster = manifest("raycluster.yaml")
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8  # meant maxReplicas
    assert errors(typo, schemas["RayCluster"]) == [
        "spec.workerGroupSpecs.0: Additional properties are not allowed ('maxReplica' was unexpected)"
    ]
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["authOptions"]["mode"] = "password"
    assert errors(wrong, schemas["RayCluster"]) == [
        "spec.authOptions.mode: 'password' is not one of ['disabled', 'token']"
    ]
    job = manifest("rayjob.yaml")
    job["spec"]["backoffLimit"] = "none"
    assert errors(job, schemas["RayJob"]) == ["spec.backoffLimit: 'none' is not of type 'integer'"]


def test_shared_volume_and_service_account_match_the_cluster():
    kinds = {d["kind"]: d for d in yaml.safe_load_all((KUBERAY / "serviceaccount.yaml").read_text())}
    assert kinds["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    cluster = manifest("raycluster.yaml")
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for g in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
        for v in g["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {kinds["PersistentVolumeClaim"]["metadata"]["name"]}
    assert kinds["ServiceAccount"]["metadata"]["name"] == "tipslab-ray"
