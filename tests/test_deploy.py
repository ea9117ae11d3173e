"""deploy/: the Ray cluster launcher config passes Ray's own validator; the Kubernetes and compose
files parse and hold what a cluster needs; no credential is written in any of them."""
import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def load_all(name):
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_aws_cluster_config_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = yaml.safe_load((DEPLOY / "cluster" / "aws-gpu.yaml").read_text())
    validate_config(config)
    validate_config(prepare_config(config))  # with Ray's defaults filled in, as `ray up` does
    import ray
    assert f"ray{ray.__version__}" in config["docker"]["image"]  # image pinned to our Ray
    worker = config["available_node_types"]["gpu_spot"]["node_config"]
    assert worker["InstanceMarketOptions"]["MarketType"] == "spot"
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:])
    assert any("/mnt/apgrid" in c for c in config["initialization_commands"])


def test_kuberay_cluster_and_job():
    docs = {d["kind"]: d for d in load_all("k8s/raycluster.yaml")}
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["authOptions"]["mode"] == "token"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    workers = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert workers["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for pod in (head, workers):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v]
        assert claims == ["apgrid-shared"]
        assert pod["containers"][0]["image"] == head["containers"][0]["image"]
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    (job,) = load_all("k8s/rayjob.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"]["ray.io/cluster"] == "apgrid"
    assert job["spec"]["entrypoint"].startswith("apgrid launch /etc/apgrid/spec.yaml --output /mnt/apgrid/")


def test_mlflow_server_has_postgres_s3_auth_and_allowed_hosts():
    docs = load_all("k8s/mlflow.yaml")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "Service", "Service", "StatefulSet"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["args"])
    for needed in ("--app-name basic-auth", "--backend-store-uri \"postgresql://",
                   "--artifacts-destination s3://", "--allowed-hosts"):
        assert needed in command
    assert container["image"].endswith(":v3.17.2")
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert services == {"apgrid-mlflow", "apgrid-postgres"}


def test_compose_stack():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) >= {"mlflow", "postgres", "minio"}
    mlflow = compose["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    assert "basic-auth" in command and "postgresql://" in command and "s3://" in command
    assert all(p.startswith("127.0.0.1:") for s in compose["services"].values()
               for p in s.get("ports", []))  # nothing exposed beyond the workstation
    assert "FROM rayproject/ray:2.60.0" in (DEPLOY / "Dockerfile").read_text()


SECRET = re.compile(r"password|secret|token|access_key", re.IGNORECASE)


def _literal_secrets(node, found):
    """Mappings whose secret-looking key holds a literal value (not ${VAR} or a secretKeyRef)."""
    if isinstance(node, dict):
        name = node.get("name")
        if isinstance(name, str) and SECRET.search(name) and isinstance(node.get("value"), str):
            found.append(f"{name}={node['value']}")
        for key, value in node.items():
            if isinstance(key, str) and SECRET.search(key) and isinstance(value, str) \
                    and value and not value.startswith("${") and key != "mode":
                found.append(f"{key}={value}")
            _literal_secrets(value, found)
    elif isinstance(node, list):
        for item in node:
            _literal_secrets(item, found)
    return found


@pytest.mark.parametrize("path", ["compose.yaml", "cluster/aws-gpu.yaml", "k8s/raycluster.yaml",
                                  "k8s/rayjob.yaml", "k8s/mlflow.yaml"])
def test_no_credentials_in_deploy_files(path):
    found = []
    for doc in load_all(path):
        _literal_secrets(doc, found)
    assert not found, f"{path}: literal credentials {found}; take them from the environment"
    assert not re.search(r"^ENV .*(PASSWORD|SECRET|ACCESS_KEY)", (DEPLOY / "Dockerfile").read_text(), re.M)


def test_the_credential_check_catches_literals():
    assert _literal_secrets({"env": [{"name": "POSTGRES_PASSWORD", "value": "hunter2"}]}, [])
    assert _literal_secrets({"environment": {"MINIO_ROOT_PASSWORD": "hunter2"}}, [])
    assert not _literal_secrets({"environment": {"MINIO_ROOT_PASSWORD": "${MINIO_ROOT_PASSWORD}"}}, [])
