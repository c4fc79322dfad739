"""Integration: the transfer_cls family (paper 002) through `dvc repro` on the smoke profile —
datasets, source-domain pretraining, training, ablation, report, promotion and prediction — with
the same CLI verbs, trainer, tracking and registry as fusion_seg."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import copy_project
from test_pipeline_dvc import _sh

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PIPELINE = "src/medops/families/transfer_cls/dvc.yaml"     # the family's own dvc.yaml (and dvc.lock)
TARGETS = f"{PIPELINE}:transfer_cls_promote {PIPELINE}:transfer_cls_evaluate"


@pytest.fixture(scope="module")
def project(tmp_path_factory, warm):
    dst = copy_project(tmp_path_factory.mktemp("cls") / "medops")
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = "smoke"
    abl = params["ablation"]["transfer_cls"]
    abl["seeds"] = [1, 2]
    abl["cells"] = {"densenet201": {}, "resnet50": {"backbone": "resnet50"}, "scratch": {"weights": "none"}}
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh("git init -q && git add -A && git commit -qm init", dst)
    repro = _sh(f"dvc repro {TARGETS}", dst, extra_env=warm)        # warm, as under `medops run`
    return dst, repro


def test_every_stage_depends_on_the_code_it_runs(project):
    from conftest import ROOT
    from dvc_deps import uncovered

    dst, _ = project
    assert uncovered(dst, dst.parent / "imports.jsonl", ROOT) == []


def test_repro_runs_pretraining_then_transfer_and_evaluates_with_gradcam(project):
    dst, repro = project
    for b in ("vgg16", "resnet50", "densenet201", "inception_v3"):
        assert f"Running stage '{PIPELINE}:pretrain@{b}'" in repro.stdout
        assert (dst / f"models/transfer_cls/pretrained/{b}/best.pt").exists()
    assert (dst / PIPELINE).with_name("dvc.lock").exists()            # the family's own lock, not the project's
    assert not (dst / "dvc.lock").exists() or "transfer_cls" not in (dst / "dvc.lock").read_text()
    m = json.loads((dst / "reports/transfer_cls/metrics.json").read_text())
    assert {"accuracy", "precision", "recall", "f1", "auc", "energy_in_mask", "pointing_hit"} <= set(m["model"])
    lo, hi = m["ci95"]["accuracy"]
    assert lo <= m["model"]["accuracy"] <= hi
    assert m["classes"] == ["normal", "gaucher"]
    for fig in ("roc.png", "confusion.png", "gradcam.png", "loss_curves.png"):
        assert (dst / "reports/transfer_cls/figures" / fig).stat().st_size > 3000
    per_case = pd.read_csv(dst / "reports/transfer_cls/per_case.csv")
    assert len(per_case) == m["n_test_cases"]
    assert np.allclose(per_case[["prob_normal", "prob_gaucher"]].sum(1), 1, atol=1e-4)
    tm = json.loads((dst / "models/transfer_cls/train_metrics.json").read_text())
    assert tm["selection_metric"] == "val_auc"


def test_mlflow_tracks_class_imbalance_and_the_transfer_source(project):
    dst, _ = project
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{dst / 'mlflow.db'}")
    exp = client.get_experiment_by_name("transfer_cls")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    names = {r.info.run_name for r in runs}
    assert {"transfer_cls/main", "transfer_cls/pretrain/densenet201", "transfer_cls/ablation"} <= names
    main = next(r for r in runs if r.info.run_name == "transfer_cls/main")
    counts = json.loads(main.data.tags["train_class_counts"])
    weights = json.loads(main.data.tags["class_weights"])
    assert counts[1] < counts[0] and weights[1] > weights[0]          # minority class up-weighted
    assert main.data.params["resolved_model.weights"] == "source" and main.data.tags["dataset"] == "gaucher-ct"
    assert "val_auc" in main.data.metrics and "test_auc" in main.data.metrics
    cell = next(r for r in runs if r.info.run_name == "transfer_cls/resnet50/seed1")
    assert cell.data.tags["factor.backbone"] == "resnet50" and "mlflow.parentRunId" in cell.data.tags


def test_report_gives_table1_with_paper_numbers_and_tests_the_claims(project):
    dst, _ = project
    rep = (dst / "reports/ablation/transfer_cls/report.md").read_text()
    assert "paper 002, Table 1" in rep and "92.4" in rep and "85.2" in rep      # the paper beside ours
    assert "(not run)" in rep                                                    # vgg16 was not in this ablation
    claims = pd.read_csv(dst / "reports/ablation/transfer_cls/claims.csv").set_index("claim")
    for claim in ("DenseNet201 > ResNet50", "transfer (source-pretrained) > from scratch"):
        row = claims.loc[claim]
        assert row.verdict in ("reproduced", "not reproduced", "untestable") and row.mde == row.mde, row
        if row.verdict == "untestable":                          # e.g. a 2-epoch smoke cell: never converged
            assert row.reason and isinstance(row.reason, str)
    assert claims.loc["ResNet50 > VGG16", "verdict"] == "untestable"
    assert "not run" in claims.loc["ResNet50 > VGG16", "reason"]
    assert "| MDE | paper Δ | verdict | reason |" in rep and "figures/validation_curves.png" in rep
    t = pd.read_csv(dst / "reports/ablation/transfer_cls/table_backbone.csv").set_index("level")
    assert t.loc["densenet201", "seeds_ok"] == "2/2" and t.loc["densenet201", "auc_ci95"] == t.loc["densenet201", "auc_ci95"]
    assert (dst / "reports/ablation/transfer_cls/figures/backbone.png").exists()


def test_promotion_registers_by_name_with_gradcam_in_the_card_and_predict_explains(project, tmp_path):
    dst, _ = project
    from mlflow.tracking import MlflowClient

    d = json.loads((dst / "reports/promotion/transfer_cls.json").read_text())
    assert d["action"] == "promoted" and any("AUC" in g["reason"] or "auc" in g["reason"] for g in d["gates"])
    client = MlflowClient(f"sqlite:///{dst / 'mlflow.db'}")
    v = client.get_model_version_by_alias("transfer_cls", "champion")
    run_id = v.run_id
    arts = {a.path for a in client.list_artifacts(run_id, "model_card_figures")}
    assert "model_card_figures/gradcam.png" in arts
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    card = mlflow.artifacts.load_text(f"runs:/{run_id}/model_card_v{v.version}.md")
    assert "model_card_figures/gradcam.png" in card and "Table 1" in card
    # predict: an RGB and a grayscale image -> class probabilities + heatmaps
    inp = tmp_path / "in"
    inp.mkdir()
    raw = sorted((dst / "data/raw/gaucher-ct/images").glob("*.dcm"))[0]
    import shutil

    shutil.copy(raw, inp / "ct.dcm")
    cv2.imwrite(str(inp / "gray.png"), (np.random.default_rng(0).random((80, 80)) * 255).astype(np.uint8))
    out = tmp_path / "pred"
    r = _sh(f"medops predict --model models:/transfer_cls@champion --input {inp} --out {out}", dst)
    assert "ct:" in r.stdout and "gray:" in r.stdout
    res = json.loads((out / "ct.json").read_text())
    assert set(res["probabilities"]) == {"normal", "gaucher"} and abs(sum(res["probabilities"].values()) - 1) < 1e-4
    assert res["model_version"] == str(v.version) and res["gradcam_layer"] == "trunk"
    assert (out / "ct_gradcam.png").exists() and np.load(out / "ct_gradcam.npy").shape == (48, 48)
    assert json.loads((out / "gray.json").read_text())["converted_gray_to_rgb"] is True
    # bad input: an unreadable file refuses the whole batch, nothing written
    (inp / "broken.png").write_bytes(b"not a png")
    bad = tmp_path / "pred_bad"
    r = _sh(f"medops predict --model models:/transfer_cls@champion --input {inp} --out {bad}", dst, check=False)
    assert r.returncode == 2 and "broken.png" in r.stderr and "readable" in r.stderr
    assert not bad.exists() or not list(bad.glob("*.json"))


def test_unknown_backbone_is_refused_before_anything_is_touched(project):
    dst, _ = project
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["transfer_cls"]["model"]["backbone"] = "resnet5000"
    (dst / "bad_params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = (dst / "models/transfer_cls/best.pt").read_bytes()
    r = _sh("medops --params bad_params.yaml train transfer_cls", dst, check=False)
    assert r.returncode == 2 and "resnet5000" in r.stderr
    assert all(b in r.stderr for b in ("vgg16", "resnet50", "densenet201", "inception_v3"))
    assert (dst / "models/transfer_cls/best.pt").read_bytes() == before


def test_rerunning_a_finished_cell_does_nothing(project):
    dst, _ = project
    r = _sh("medops train transfer_cls --cell resnet50 --seed 1", dst)
    assert "already trained with these inputs" in r.stdout
    st = _sh(f"dvc status {TARGETS}", dst)
    assert "up to date" in st.stdout


def test_airflow_runs_the_transfer_dag_from_the_same_factory(project, tmp_path, warm):
    """`airflow dags test transfer_cls`: per-dataset validate/preprocess, per-backbone pretraining, training,
    the mapped cells, evaluation, report and promotion all succeed; nothing already trained is retrained."""
    from test_pipeline_dvc import _airflow, _task_states
    from mlflow.tracking import MlflowClient

    dst, _ = project
    client = MlflowClient(f"sqlite:///{dst / 'mlflow.db'}")
    exp = client.get_experiment_by_name("transfer_cls").experiment_id
    n_runs = len(client.search_runs([exp], max_results=500))
    _airflow(dst, tmp_path, "airflow db migrate")
    _airflow(dst, tmp_path, "airflow dags test transfer_cls", warm=warm)   # each task forked from the server
    states = _task_states(tmp_path, "transfer_cls")
    assert all(s == "success" for s in states.values()), states
    assert {("pretrain_densenet201", -1), ("validate_gaucher_ct", -1), ("preprocess_rare_source", -1)} <= set(states)
    assert sum(1 for k in states if k[0] == "ablate") == 6
    assert len(client.search_runs([exp], max_results=500)) == n_runs
