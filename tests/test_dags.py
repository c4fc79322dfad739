"""Orchestration: the DAG factory (parse speed, structure, schedule) and the Kubernetes pods it renders."""

import copy
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from k8s_checks import pod_violations

DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    sys.path.insert(0, str(DAGS))
    import medops_factory

    yield medops_factory
    sys.path.remove(str(DAGS))


def test_parsing_all_dags_imports_neither_torch_nor_medops(tmp_path):
    """DAG files are wiring: parsing them imports neither torch nor medops (their parse time is measured
    in benchmarks/dag_overhead.py, not asserted here: a timed test fails on a busy machine)."""
    code = ("import sys, time; sys.path.insert(0, %r); t = time.perf_counter(); import medops_dags; "
            "dt = time.perf_counter() - t; import json; print(json.dumps({'s': dt, 'torch': 'torch' in sys.modules, "
            "'medops': 'medops' in sys.modules, 'dags': sorted(k for k in vars(medops_dags) if k.startswith(('dag_', 'dataset_')))}))"
            % str(DAGS))
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert not res["torch"] and not res["medops"]
    assert res["dags"] == ["dag_fusion_seg", "dag_nodule3d", "dag_transfer_cls", "dag_vl_fusion",
                           "dataset_breast_trimodal", "dataset_cxr_reports", "dataset_cxr_source", "dataset_gaucher_ct",
                           "dataset_lidc_sim",
                           "dataset_nf_mri", "dataset_ocular_fundus", "dataset_rare_source"]


def test_vl_fusion_pretrains_its_trunk_on_the_source_set_before_training_and_the_cells(factory):
    params = factory.load_params(ROOT)
    t = factory.build_family_dag("vl_fusion", params).task_dict
    assert "train vl_fusion --pretrain trunk" in t["pretrain_trunk"].bash_command
    assert t["pretrain_trunk"].downstream_task_ids == {"train", "ablate"}
    assert t["pretrain_trunk"].upstream_task_ids == {"preprocess_cxr_reports", "preprocess_cxr_source"}


def test_transfer_family_comes_from_the_same_factory_with_pretraining_and_its_datasets(factory):
    """Adding a family added params, not orchestration code: its DAG has a validate/preprocess pair per
    dataset, a pretraining task per backbone before training and the ablation, one mapped cell task each."""
    params = factory.load_params(ROOT)
    dag = factory.build_family_dag("transfer_cls", params)
    t = dag.task_dict
    datasets = params["orchestration"]["datasets"]["transfer_cls"]
    for d in datasets:
        key = d.replace("-", "_")
        assert t[f"validate_{key}"].downstream_task_ids == {f"preprocess_{key}"}
        assert f"preprocess --dataset {d}" in t[f"preprocess_{key}"].bash_command
    backbones = params["transfer_cls"]["pretrain"]["backbones"]
    for b in backbones:
        assert f"train transfer_cls --pretrain {b}" in t[f"pretrain_{b}"].bash_command
        assert t[f"pretrain_{b}"].downstream_task_ids == {"train", "ablate"}
        assert t[f"pretrain_{b}"].upstream_task_ids == {f"preprocess_{d.replace('-', '_')}" for d in datasets}
    n_cells = len(params["ablation"]["transfer_cls"]["cells"]) * len(params["ablation"]["transfer_cls"]["seeds"])
    cmds = t["ablate"].expand_input.value["bash_command"]
    assert len(cmds) == n_cells and all("train transfer_cls --cell" in c for c in cmds)
    assert t["promote"].upstream_task_ids == {"report"}
    assert all(f"medops-dataset-{d}" in repr(dag.timetable.asset_condition) for d in datasets)


def test_family_dag_shape_schedule_and_retries(factory):
    params = factory.load_params(ROOT)
    dag = factory.build_family_dag("fusion_seg", params)
    ids = {t.task_id for t in dag.tasks}
    assert ids == {"validate", "preprocess", "train", "evaluate", "ablate", "report", "promote"}
    t = dag.task_dict
    assert t["validate"].downstream_task_ids == {"preprocess"}
    assert t["preprocess"].downstream_task_ids == {"train", "ablate"}
    assert t["report"].upstream_task_ids == {"evaluate", "ablate"}
    assert t["promote"].upstream_task_ids == {"report"}
    n_cells = len(params["ablation"]["fusion_seg"]["cells"]) * len(params["ablation"]["fusion_seg"]["seeds"])
    assert len(t["ablate"].expand_input.value["bash_command"]) == n_cells
    assert all("--resume" in c for c in t["ablate"].expand_input.value["bash_command"])
    assert "medops" in t["validate"].bash_command and "validate --dataset breast-trimodal" in t["validate"].bash_command
    sched = dag.timetable
    assert sched.timetable.expression == params["orchestration"]["schedule"]
    assert "medops-dataset-breast-trimodal" in repr(sched.asset_condition)
    assert t["train"].retries == params["orchestration"]["retries"]
    producer = factory.build_dataset_dag("breast-trimodal", params)
    assert [a.name for a in producer.task_dict["generate"].outlets] == ["medops-dataset-breast-trimodal"]


# ------------------------------------------------------------------ Kubernetes pods
@pytest.fixture(scope="module")
def k8s_dag(factory):
    assert os.environ["KUBECONFIG"]  # a dummy config, written by conftest before any kubernetes import
    params = copy.deepcopy(factory.load_params(ROOT))
    params["orchestration"]["executor"] = "kubernetes"
    return factory.build_family_dag("fusion_seg", params), params


def _render(op) -> dict:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(op.build_pod_request_obj())


@pytest.mark.parametrize("task_id", ["validate", "preprocess", "train", "evaluate", "report", "promote"])
def test_every_pod_is_valid_restricted_and_gpu_where_training(k8s_dag, task_id):
    import kubernetes_validate

    dag, params = k8s_dag
    op = dag.task_dict[task_id]
    pod = _render(op)
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("kind", "Pod")
    kubernetes_validate.validate(pod, "1.33", strict=True)
    gpu = task_id == "train"
    assert pod_violations(pod, gpu=gpu) == []
    assert op.on_finish_action.value == "delete_pod"
    assert op.startup_timeout_seconds == params["orchestration"]["kubernetes"]["startup_timeout_seconds"]
    assert pod["spec"]["containers"][0]["command"] == ["medops"]


def test_mapped_ablation_pods_share_the_gpu_spec(k8s_dag, factory):
    dag, params = k8s_dag
    ablate = dag.task_dict["ablate"]
    args = ablate.expand_input.value["arguments"]
    assert len(args) == len(params["ablation"]["fusion_seg"]["cells"]) * len(params["ablation"]["fusion_seg"]["seeds"])
    kw = ablate.partial_kwargs
    assert kw["container_resources"].limits["nvidia.com/gpu"] == "1"
    assert kw["on_finish_action"] == "delete_pod"
    op = factory._k8s_task("ablate_probe", args[0], params["orchestration"]["kubernetes"], gpus=1)
    assert pod_violations(_render(op), gpu=True) == []


def test_multi_gpu_training_pod_launches_torchrun(factory):
    params = factory.load_params(ROOT)
    kcfg = dict(params["orchestration"]["kubernetes"], gpus_per_training_task=4)
    op = factory._k8s_task("train", ["train", "fusion_seg"], kcfg, gpus=4)
    assert op.arguments[-2:] == ["--nproc", "4"]
    assert op.container_resources.limits["nvidia.com/gpu"] == "4"


def test_the_checker_catches_a_pod_missing_limits_or_security(k8s_dag):
    dag, _ = k8s_dag
    pod = _render(dag.task_dict["train"])
    bad = copy.deepcopy(pod)
    del bad["spec"]["containers"][0]["resources"]["limits"]
    assert "cpu/memory requests and limits" in pod_violations(bad, gpu=True)
    bad = copy.deepcopy(pod)
    bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    bad["spec"]["containers"][0]["env"] = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]
    v = pod_violations(bad, gpu=True)
    assert "allowPrivilegeEscalation false" in v and "credential AWS_SECRET_ACCESS_KEY inlined" in v


def test_ablation_concurrency_is_gpus_times_cells_per_gpu(factory):
    params = copy.deepcopy(factory.load_params(ROOT))
    assert factory.build_family_dag("fusion_seg", params).task_dict["ablate"].partial_kwargs[
        "max_active_tis_per_dagrun"] == 1                               # gpus: 0 -> one cell at a time
    params["orchestration"].update(gpus=2, cells_per_gpu=3)
    for executor in ("local", "kubernetes"):
        params["orchestration"]["executor"] = executor
        ablate = factory.build_family_dag("fusion_seg", params).task_dict["ablate"]
        assert ablate.partial_kwargs["max_active_tis_per_dagrun"] == 6, executor
    params["orchestration"]["cells_per_gpu"] = 0
    with pytest.raises(ValueError, match="cells_per_gpu"):
        factory.build_family_dag("fusion_seg", params)
