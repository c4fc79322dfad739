"""One DAG factory for every medops model family (wiring only: no torch, no medops imports).

Each task runs a `medops` CLI verb — the same verbs `dvc.yaml` runs — either here
(executor `local`) or in a Kubernetes pod (executor `kubernetes`, KubernetesPodOperator
with GPU limits and restricted Pod Security). Settings come from params.yaml
`orchestration` (a small YAML read at parse time, nothing heavy).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pendulum
import yaml
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable

PROJECT = Path(os.environ.get("MEDOPS_PROJECT_DIR", Path(__file__).resolve().parents[1]))
def load_params(project: Path = PROJECT) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


def datasets_of(params: dict, family: str) -> list[str]:
    """The datasets a family's DAG validates and preprocesses (params.yaml orchestration.datasets)."""
    found = params.get("orchestration", {}).get("datasets", {}).get(family)
    if not found:
        raise ValueError(f"params.yaml:orchestration.datasets.{family}: no datasets listed for family '{family}' "
                         f"(add e.g. `{family}: [my-dataset]`)")
    return list(found)


def pretrain_backbones(params: dict, family: str) -> list[str]:
    """Source-domain pretraining steps of a transfer family (params.yaml <family>.pretrain.backbones)."""
    return list((params.get(family, {}) or {}).get("pretrain", {}).get("backbones", []) or [])


def dataset_asset(dataset: str) -> Asset:
    """A dataset version is an Asset: `dvc repro generate` / `dvc pull` in the dataset DAG updates it."""
    return Asset(name=f"medops-dataset-{dataset}", uri=f"file://{PROJECT}/data/raw/{dataset}", group="medops")


def cells_of(params: dict, family: str) -> list[tuple[str, int]]:
    abl = params.get("ablation", {}).get(family, {})
    return [(c, int(s)) for c in abl.get("cells", {}) for s in abl.get("seeds", [])]


def parallel_cells(params: dict) -> int:
    """How many ablation cells run at once: ``gpus x cells_per_gpu`` (several cells share one GPU: measured
    by benchmarks/gpu.py), one at a time without GPUs."""
    orch = params.get("orchestration", {})
    gpus, per = int(orch.get("gpus", 0)), int(orch.get("cells_per_gpu", 1))
    if gpus < 0 or per < 1:
        raise ValueError(f"params.yaml:orchestration: gpus must be >= 0 and cells_per_gpu >= 1 (got {gpus}, {per})")
    return max(1, gpus * per)


def _medops() -> str:
    default = PROJECT / ".venv" / "bin" / "medops"
    return os.environ.get("MEDOPS_BIN", str(default) if default.exists() else "medops")


RESUME = "{{ '--resume' if ti.try_number > 1 else '' }}"  # a retry continues from its checkpoint


def _local_task(task_id: str, args: list[str], **kw):
    from airflow.providers.standard.operators.bash import BashOperator

    cmd = f"cd {shlex.quote(str(PROJECT))} && {shlex.quote(_medops())} " + " ".join(args)
    return BashOperator(task_id=task_id, bash_command=cmd, **kw)


def pod_spec(kcfg: dict, *, gpus: int) -> dict:
    """KubernetesPodOperator arguments shared by every medops pod (restricted Pod Security)."""
    from kubernetes.client import models as k8s

    limits = {"cpu": kcfg["cpu_limit"], "memory": kcfg["memory_limit"]}
    requests = {"cpu": kcfg["cpu_request"], "memory": kcfg["memory_request"]}
    spec = dict(
        namespace=kcfg["namespace"], image=kcfg["image"], service_account_name=kcfg["service_account"],
        container_resources=k8s.V1ResourceRequirements(
            requests=requests | ({"nvidia.com/gpu": str(gpus)} if gpus else {}),
            limits=limits | ({"nvidia.com/gpu": str(gpus)} if gpus else {})),
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=10001, run_as_group=10001, fs_group=10001,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        container_security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]), seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        volumes=[k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=kcfg["scratch_size"])),
                 k8s.V1Volume(name="project", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                     claim_name=kcfg["data_pvc"]))],
        volume_mounts=[k8s.V1VolumeMount(name="scratch", mount_path="/tmp"),
                       k8s.V1VolumeMount(name="project", mount_path="/workspace")],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s)) for s in kcfg["secrets"]],
        env_vars=[k8s.V1EnvVar(name="HOME", value="/tmp"), k8s.V1EnvVar(name="MPLCONFIGDIR", value="/tmp")],
        startup_timeout_seconds=int(kcfg["startup_timeout_seconds"]),
        on_finish_action="delete_pod", get_logs=True,
    )
    if gpus:
        spec["node_selector"] = dict(kcfg["node_selector"])
        spec["tolerations"] = [k8s.V1Toleration(key=kcfg["gpu_toleration"], operator="Exists", effect="NoSchedule")]
    return spec


def _k8s_task(task_id: str, args: list[str], kcfg: dict, gpus: int = 0, **kw):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    if gpus > 1:  # one process per GPU: the shared trainer under torchrun (DDP)
        args = [*args, "--nproc", str(gpus)]
    return KubernetesPodOperator(task_id=task_id, name=f"medops-{task_id}".replace("_", "-"), cmds=["medops"],
                                 arguments=args, **pod_spec(kcfg, gpus=gpus), **kw)


def build_dataset_dag(dataset: str, params: dict | None = None) -> DAG:
    """Produces a new dataset version and updates its Asset, which triggers the families that use it."""
    with DAG(dag_id=f"dataset_{dataset.replace('-', '_')}", schedule=None, catchup=False,
             start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), tags=["medops", "dataset"]) as dag:
        _local_task("generate", ["generate", dataset, "--force"], outlets=[dataset_asset(dataset)])
    return dag


def build_family_dag(family: str, params: dict | None = None) -> DAG:
    """validate -> preprocess (per dataset) -> [pretrain per backbone] -> train (main) + ablate (one mapped task
    per cell) -> evaluate -> report -> promote."""
    params = params or load_params()
    orch = params.get("orchestration", {})
    datasets = datasets_of(params, family)
    executor = orch.get("executor", "local")
    kcfg = orch.get("kubernetes", {})
    gpus = int(kcfg.get("gpus_per_training_task", 1))
    schedule = AssetOrTimeSchedule(timetable=CronTriggerTimetable(orch.get("schedule", "0 3 * * 1"), timezone="UTC"),
                                   assets=[dataset_asset(d) for d in datasets])
    retries = int(orch.get("retries", 2))
    with DAG(dag_id=family, schedule=schedule, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
             max_active_runs=1, tags=["medops", family],
             default_args={"retries": retries, "retry_delay": pendulum.duration(seconds=10)},
             doc_md=f"medops `{family}`: the same CLI verbs as `dvc repro`, executor `{executor}`.") as dag:
        if executor == "kubernetes":
            def make(task_id, args, gpu=0, **kw):
                return _k8s_task(task_id, args, kcfg, gpus=gpu, **kw)
        elif executor == "local":
            def make(task_id, args, gpu=0, **kw):
                return _local_task(task_id, args, **kw)
        else:
            raise ValueError(f"params.yaml:orchestration.executor: unknown executor '{executor}' (use local | kubernetes)")
        preprocess = []
        for d in datasets:
            suffix = "" if len(datasets) == 1 else "_" + d.replace("-", "_")
            validate = make(f"validate{suffix}", ["validate", "--dataset", d])
            prep = make(f"preprocess{suffix}", ["preprocess", "--dataset", d])
            validate >> prep
            preprocess.append(prep)
        pretrain = [make(f"pretrain_{b}", ["train", family, "--pretrain", b, RESUME], gpu=gpus)
                    for b in pretrain_backbones(params, family)]
        train = make("train", ["train", family, RESUME], gpu=gpus)
        evaluate = make("evaluate", ["evaluate", family])
        cell_args = [["train", family, "--cell", c, "--seed", str(s), RESUME] for c, s in cells_of(params, family)]
        if executor == "kubernetes":
            from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

            ablate = KubernetesPodOperator.partial(
                task_id="ablate", name=f"medops-{family}-cell", cmds=["medops"], **pod_spec(kcfg, gpus=gpus),
                max_active_tis_per_dagrun=parallel_cells(params),
            ).expand(arguments=cell_args)
        else:
            from airflow.providers.standard.operators.bash import BashOperator

            base = f"cd {shlex.quote(str(PROJECT))} && {shlex.quote(_medops())} "
            ablate = BashOperator.partial(task_id="ablate", max_active_tis_per_dagrun=parallel_cells(params)).expand(
                bash_command=[base + " ".join(a) for a in cell_args])
        report = make("report", ["report", family])
        promote = make("promote", ["promote", family])
        if pretrain:
            for prep in preprocess:
                prep >> pretrain
            for t in pretrain:
                t >> [train, ablate]
        else:
            for prep in preprocess:
                prep >> [train, ablate]
        train >> evaluate
        [evaluate, ablate] >> report >> promote
    return dag
