"""Integration: the smoke profile through `dvc repro`, as a user runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent


def _sh(cmd, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dst = tmp_path_factory.mktemp("proj") / "medops"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    _sh("git init -q && git add -A && git commit -qm init", dst)
    _sh("medops profile smoke", dst)
    repro = _sh("dvc repro", dst)
    return dst, repro


def test_repro_produces_metrics_predictions_figures(project):
    dst, repro = project
    m = json.loads((dst / "reports/fusion_seg/metrics.json").read_text())
    assert set(m["model"]) == {"dsc", "iou", "sensitivity", "specificity"}
    assert all(0 <= v <= 1 for v in m["model"].values())
    per_case = pd.read_csv(dst / "reports/fusion_seg/per_case.csv")
    n = m["n_test_cases"]
    assert (per_case.method == "fusion_seg").sum() == n
    assert len(list((dst / "reports/fusion_seg/predictions").glob("*.png"))) == n
    for fig in ("loss_curves.png", "overlays.png"):
        assert (dst / "reports/fusion_seg/figures" / fig).stat().st_size > 5000
    assert (dst / "reports/validation/breast-trimodal/data_docs/index.html").exists()
    hist = pd.read_csv(dst / "models/fusion_seg/history.csv")
    assert {"train_loss", "val_loss", "val_dice"} <= set(hist.columns)


def test_mlflow_run_has_config_metrics_tags_model(project):
    dst, _ = project
    import mlflow
    from mlflow.tracking import MlflowClient

    run_info = json.loads((dst / "models/fusion_seg/run.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    client = MlflowClient()
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "fusion_seg/main"
    head = _sh("git rev-parse HEAD", dst).stdout.strip()
    assert run.data.tags["git_commit"].startswith(head)
    assert run.data.tags["profile"] == "smoke"
    lock = (dst / "dvc.lock").read_text()
    assert run.data.tags["dataset_version"].startswith("dvc:")
    assert run.data.tags["dataset_version"][4:] in lock
    assert "test_dsc" in run.data.metrics and "val_dice" in run.data.metrics
    hist = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(hist) == 3  # one per epoch (smoke: 3 epochs)
    assert run.data.params["fusion_seg.train.lr"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "figures", "evaluation", "training", "attention"} <= arts
    model = mlflow.pytorch.load_model(run_info["model_uri"])
    import torch

    x = torch.rand(1, 3, 64, 64)
    y = model(x)
    y = y.detach()
    assert y.shape == (1, 1, 64, 64) and 0 <= float(y.min()) and float(y.max()) <= 1


def test_second_repro_does_nothing_and_push_works(project):
    dst, _ = project
    r = _sh("dvc repro", dst)
    assert "didn't change" in r.stdout or "up to date" in r.stdout
    assert "Running stage" not in r.stdout
    st = _sh("dvc status", dst)
    assert "up to date" in st.stdout
    _sh("dvc push", dst)
    assert any((dst / "dvc-remote").rglob("*"))


def test_make_run_prints_table_and_ui_command(project):
    dst, _ = project
    r = _sh("medops show fusion_seg", dst)
    assert "DSC" in r.stdout and "otsu_" in r.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in r.stdout


def test_cli_train_killed_mid_run_then_resumed_matches_uninterrupted(project):
    """`medops train` SIGKILLed after its first checkpoint, then `--resume`: same history, same MLflow run."""
    import signal
    import time

    import torch

    dst, _ = project
    params = dst / "params.yaml"
    original = params.read_text()
    saved = {p: p.read_bytes() for p in (dst / "models/fusion_seg").iterdir() if p.is_file()}
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        params.write_text(original.replace("epochs: {smoke: 3,", "epochs: {smoke: 8,"))
        _sh("medops train fusion_seg", dst)
        ref = pd.read_csv(dst / "models/fusion_seg/history.csv")
        assert len(ref) == 8
        (dst / "models/fusion_seg/last.pt").unlink()  # so polling only sees this run's checkpoint
        proc = subprocess.Popen(["medops", "train", "fusion_seg"], cwd=dst, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = dst / "models/fusion_seg/last.pt"
        t0, killed_at = time.time(), None
        while time.time() - t0 < 120 and proc.poll() is None:
            if last.exists():
                try:
                    killed_at = torch.load(last, weights_only=True)["epoch"]
                except Exception:
                    killed_at = None  # being written
                if killed_at is not None:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
        proc.wait()
        assert killed_at is not None and killed_at < 8, "the run was not killed mid-training"
        run_id = json.loads((dst / "models/fusion_seg/run.json").read_text())["run_id"]
        _sh("medops train fusion_seg --resume", dst)
        resumed = pd.read_csv(dst / "models/fusion_seg/history.csv")
        assert len(resumed) == 8
        for col in ("train_loss", "val_loss", "val_dice"):
            assert (ref[col] - resumed[col]).abs().max() < 1e-6, col
        assert json.loads((dst / "models/fusion_seg/run.json").read_text())["run_id"] == run_id
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
        client = MlflowClient()
        assert client.get_run(run_id).info.status == "FINISHED"
        steps = sorted({m.step for m in client.get_metric_history(run_id, "train_loss")})
        assert steps == list(range(1, 9))
    finally:
        params.write_text(original)
        for p, b in saved.items():
            p.write_bytes(b)
