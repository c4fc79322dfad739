"""infra/: every Kubernetes manifest renders, validates strictly, and meets the security rules."""

import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT
from k8s_checks import pod_violations

BASE = ROOT / "infra/k8s/base"
K8S_VERSION = "1.33"


def render() -> list[dict]:
    """`kubectl kustomize` when kubectl is installed; otherwise the kustomization's resources as listed
    (same objects, without the namespace and common labels kustomize adds)."""
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, check=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for r in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / r).read_text()) if d]
    return docs


@pytest.fixture(scope="module")
def docs():
    return render()


def test_every_manifest_is_valid_kubernetes(docs):
    import kubernetes_validate

    kinds = sorted(d["kind"] for d in docs)
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "StatefulSet", "Deployment", "Service",
            "PersistentVolumeClaim"} <= set(kinds)
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_namespace_enforces_restricted_pod_security(docs):
    ns = next(d for d in docs if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", ["postgres", "seaweedfs", "mlflow"])
def test_workloads_are_restricted_with_limits_and_secret_references(docs, name):
    w = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name)
    tmpl = w["spec"]["template"]
    assert pod_violations(tmpl, gpu=False, secrets_from_env_from=False) == []
    creds = [e for c in tmpl["spec"]["containers"] for e in c.get("env", [])
             if re.search("PASSWORD|SECRET|ACCESS_KEY|USER", e["name"])]
    assert creds and all("secretKeyRef" in e.get("valueFrom", {}) for e in creds)


def test_no_secret_is_inlined_anywhere():
    assert not [d for d in render() if d["kind"] == "Secret"]
    for f in [*BASE.glob("*.yaml"), ROOT / "infra/helm/airflow-values.yaml"]:
        text = f.read_text()
        assert not re.search(r"(?i)(password|secret_access_key|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}", text), f


def test_mlflow_uses_postgres_backend_and_s3_artifacts(docs):
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    args = " ".join(mlflow["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "postgresql+psycopg2://" in args and "--artifacts-destination s3://" in args


def test_pod_launcher_rbac_allows_creating_and_deleting_pods(docs):
    role = next(d for d in docs if d["kind"] == "Role")
    pods = next(r for r in role["rules"] if "pods" in r["resources"])
    assert {"create", "delete", "get", "watch"} <= set(pods["verbs"])
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert {s["name"] for s in binding["subjects"]} >= {"medops-runner", "airflow-worker"}


def test_dockerfile_is_non_root_and_installs_from_the_lock():
    text = (ROOT / "infra/docker/Dockerfile").read_text()
    assert "ARG DEVICE=cuda" in text and "FROM base-${DEVICE}" in text
    assert "--no-deps -r /opt/medops/requirements.lock" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0"))
    assert 'ENTRYPOINT ["medops"]' in text


def test_gpu_time_slicing_config_is_valid_and_agrees_with_cells_per_gpu():
    """Several cells per GPU: the device plugin's time-slicing replicas = params orchestration.cells_per_gpu."""
    import kubernetes_validate

    cm = yaml.safe_load((ROOT / "infra/k8s/gpu-sharing/time-slicing.yaml").read_text())
    kubernetes_validate.validate(cm, K8S_VERSION, strict=True)
    sharing = yaml.safe_load(cm["data"]["any"])["sharing"]["timeSlicing"]["resources"][0]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert sharing == {"name": "nvidia.com/gpu", "replicas": params["orchestration"]["cells_per_gpu"]}


def test_local_services_refuse_to_start_on_a_nearly_full_disk(tmp_path):
    """SeaweedFS turns read-only below 1 % free disk and MLflow uploads then fail with HTTP 500 far from the
    cause: `services.sh start` checks first, names the folder, the rule and the fix, and starts nothing."""
    import os

    state = tmp_path / "svc"
    r = subprocess.run(["bash", str(ROOT / "infra/local/services.sh"), "start"], capture_output=True, text=True,
                       env={**os.environ, "MEDOPS_SERVICES_DIR": str(state), "MEDOPS_SERVICES_HEADROOM_GB": "100000"})
    assert r.returncode == 1
    assert f"{state} has" in r.stderr and "1 % of the disk" in r.stderr and "MEDOPS_SERVICES_DIR" in r.stderr
    assert sorted(p.name for p in state.iterdir()) == []   # no database, no S3 store, no server
