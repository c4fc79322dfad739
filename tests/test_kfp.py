"""Kubeflow Pipelines v2: the compiled pipeline is committed (golden) and carries the cluster settings."""

import sys

import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "components"))
import medops_kfp  # noqa: E402


def test_recompiling_matches_the_committed_yaml(tmp_path):
    fresh = medops_kfp.compile_all(tmp_path)
    for p in fresh:
        golden = ROOT / "components" / p.name
        assert golden.exists(), f"{golden} is not committed: run `python components/medops_kfp.py`"
        assert p.read_text() == golden.read_text(), f"{golden.name} is stale: run `python components/medops_kfp.py`"


def test_pipeline_steps_gpu_tolerations_and_secrets():
    docs = list(yaml.safe_load_all((ROOT / "components/fusion_seg_pipeline.yaml").read_text()))
    spec, platform = docs[0], docs[1]
    params = medops_kfp.load_params()
    tasks = spec["root"]["dag"]["tasks"]
    n_cells = len(params["ablation"]["fusion_seg"]["cells"]) * len(params["ablation"]["fusion_seg"]["seeds"])
    names = {t["taskInfo"]["name"] for t in tasks.values()}
    assert {"validate", "preprocess", "train", "evaluate", "report", "promote"} <= names
    assert sum(n.startswith("ablate-") for n in names) == n_cells
    by_name = {t["taskInfo"]["name"]: k for k, t in tasks.items()}
    assert set(tasks[by_name["preprocess"]]["dependentTasks"]) == {by_name["validate"]}
    execs = spec["deploymentSpec"]["executors"]
    train_exec = tasks[by_name["train"]]["componentRef"]["name"].replace("comp-", "exec-")
    res = execs[train_exec]["container"]["resources"]
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and int(res["accelerator"]["resourceCount"]) >= 1
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][train_exec]
    assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {s["secretName"] for s in k8s["secretAsEnv"]} == {"medops-mlflow", "medops-s3"}
    assert k8s["pvcMount"][0]["mountPath"] == "/workspace"
    text = (ROOT / "components/fusion_seg_pipeline.yaml").read_text()
    assert "medops-test-secret" not in text and "AWS_SECRET_ACCESS_KEY:" not in text.replace("secretKey", "")


def test_transfer_pipeline_pretrains_before_training():
    docs = list(yaml.safe_load_all((ROOT / "components/transfer_cls_pipeline.yaml").read_text()))
    tasks = docs[0]["root"]["dag"]["tasks"]
    by_name = {t["taskInfo"]["name"]: k for k, t in tasks.items()}
    params = medops_kfp.load_params()
    pre = {by_name[f"pretrain-{b}"] for b in params["transfer_cls"]["pretrain"]["backbones"]}
    assert set(tasks[by_name["train"]]["dependentTasks"]) == pre
    assert set(tasks[by_name["ablate-densenet201-1"]]["dependentTasks"]) == pre
    assert {f"preprocess-{d}" for d in params["orchestration"]["datasets"]["transfer_cls"]} <= set(by_name)
