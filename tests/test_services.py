"""Real services on loopback (started by `make test` via infra/local/services.sh, or by this module):
PostgreSQL + SeaweedFS (S3) + an MLflow tracking server. DVC push/pull to S3, training logged to the
server, registry promotion, loading the champion in a clean workspace, the MLflow UI rendered by Chromium."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, copy_project, edit_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent
SERVICES = ROOT / "infra/local/services.sh"


@pytest.fixture(scope="module")
def services():
    """The services `make test` started; started here (and stopped afterwards) when pytest runs alone."""
    env_text = subprocess.run([str(SERVICES), "env"], check=True, capture_output=True, text=True).stdout
    env = dict(line.removeprefix("export ").split("=", 1) for line in env_text.splitlines() if line.strip())
    up = subprocess.run([str(SERVICES), "status"], capture_output=True).returncode == 0
    if not up:
        subprocess.run([str(SERVICES), "start"], check=True, capture_output=True, text=True)
    yield env
    if not up:
        subprocess.run([str(SERVICES), "stop"], capture_output=True)


def _s3(services):
    import boto3

    return boto3.client("s3", endpoint_url=services["MEDOPS_S3_ENDPOINT"], region_name="us-east-1",
                        aws_access_key_id=services["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=services["AWS_SECRET_ACCESS_KEY"])


def _sh(cmd, cwd, env, check=True):
    full = {**os.environ, **env, "PATH": f"{BIN}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=full)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def served_project(services, tmp_path_factory, warm):
    """Smoke project (one ablation cell) run by `dvc repro` against the MLflow server, data pushed to S3."""
    dst = copy_project(tmp_path_factory.mktemp("served") / "medops", cells={"tri_attention": {}})

    def one_seed(p):
        for abl in p["ablation"].values():
            abl["seeds"] = [1]
        p["tracking"]["experiment_prefix"] = f"{dst.parent.name}-"

    edit_params(dst / "params.yaml", one_seed)
    s3 = services["MEDOPS_S3_ENDPOINT"]
    prefix = dst.parent.name
    from mlflow.tracking import MlflowClient

    client = MlflowClient(services["MLFLOW_TRACKING_URI"])
    try:  # the test server may hold a registry from an earlier local run: start from an empty one
        client.delete_registered_model("fusion_seg")
    except Exception:
        pass
    _sh(f"git init -q && medops profile smoke && dvc remote add -d s3store s3://dvc/{prefix} && "
        f"dvc remote modify s3store endpointurl {s3} && git add -A && git commit -qm init", dst, services)
    _sh("dvc repro promote evaluate", dst, {**services, **warm})   # warm (as under `medops run`), to the server
    _sh("git add -A && git commit -qm repro && dvc push", dst, services)
    return dst, prefix


def test_training_logged_to_the_server_and_promoted(served_project, services):
    import mlflow
    from mlflow.tracking import MlflowClient

    dst, prefix = served_project
    mlflow.set_tracking_uri(services["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    run_id = json.loads((dst / "models/fusion_seg/run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "test_dsc" in run.data.metrics
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert client.get_experiment(run.info.experiment_id).name == f"{prefix}-fusion_seg"
    d = json.loads((dst / "reports/promotion/fusion_seg.json").read_text())
    assert d["action"] in ("promoted", "unchanged")
    s3 = _s3(services)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(run_id in k for k in keys)


def test_dvc_pull_in_a_clean_workspace_and_load_the_champion(served_project, services, tmp_path):
    import mlflow
    import torch

    dst, _ = served_project
    clone = tmp_path / "clone"
    _sh(f"git clone -q {dst} {clone}", tmp_path, services)
    assert not (clone / "data/raw/breast-trimodal").exists()
    # the fusion_seg pipeline and everything it depends on (this project never ran transfer_cls)
    _sh("dvc pull --with-deps promote evaluate", clone, services)
    assert (clone / "data/raw/breast-trimodal/manifest.parquet").exists()
    assert (clone / "models/fusion_seg/best.pt").exists()
    st = _sh("dvc status promote evaluate", clone, services).stdout
    deleted = {ln.split()[-1] for ln in st.splitlines() if "deleted:" in ln}
    cached = ("data/raw/", "data/preprocessed/", "models/fusion_seg/best.pt", "models/fusion_seg/last.pt",
              "models/fusion_seg/cells/")
    assert not any(p.startswith(cached) for p in deleted), st  # only `cache: false` reports are not in the remote
    mlflow.set_tracking_uri(services["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model("models:/fusion_seg@champion")  # safetensors + loader module, no pickle
    y = model.predict(torch.rand(1, 3, 64, 64).numpy())
    assert y.shape == (1, 1, 64, 64)


def test_wrong_s3_secret_is_a_clear_error_and_writes_nothing(served_project, services):
    dst, prefix = served_project
    s3 = _s3(services)
    before = s3.list_objects_v2(Bucket="dvc", Prefix=prefix).get("KeyCount", 0)
    (dst / "extra.txt").write_text("new data\n")
    _sh("dvc add extra.txt", dst, services)
    r = _sh("dvc push", dst, {**services, "AWS_SECRET_ACCESS_KEY": "wrong-secret-000"}, check=False)
    assert r.returncode != 0
    assert any(w in (r.stdout + r.stderr) for w in ("SignatureDoesNotMatch", "403", "Forbidden", "AccessDenied"))
    assert s3.list_objects_v2(Bucket="dvc", Prefix=prefix).get("KeyCount", 0) == before


def test_mlflow_server_down_is_a_clear_error_naming_the_uri(served_project, services):
    dst, _ = served_project
    before = (dst / "models/fusion_seg/run.json").read_text()
    r = _sh("medops train fusion_seg --force", dst, {**services, "MLFLOW_TRACKING_URI": "http://127.0.0.1:59999"},
            check=False)
    assert r.returncode == 2
    assert "http://127.0.0.1:59999" in r.stderr and "unreachable" in r.stderr
    assert (dst / "models/fusion_seg/run.json").read_text() == before


def test_mlflow_ui_renders_the_run(served_project, services, tmp_path):
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by `make system-deps` (make test)"
    dst, _ = served_project
    run = json.loads((dst / "models/fusion_seg/run.json").read_text())
    url = f"{services['MLFLOW_TRACKING_URI']}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
    shot = tmp_path / "ui.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}",
                    "--window-size=1400,900", "--virtual-time-budget=15000", f"--screenshot={shot}", url],
                   check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (900, 1400)
    assert img.std() > 10 and (img < 200).mean() > 0.01, "the screenshot is blank"
    shutil.copy(shot, ROOT / "benchmarks" / "results" / "mlflow_ui.png") if (ROOT / "benchmarks/results").exists() else None
