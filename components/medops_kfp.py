"""Kubeflow Pipelines v2: the medops steps as components that call the `medops` CLI.

Lightweight components (so the same pipeline runs under `kfp.local.SubprocessRunner`
in the test suite) whose body runs one CLI verb in the project directory; on a
cluster they run in the training image with the project on a PVC, GPU requests and
tolerations from `kfp-kubernetes`, credentials from Secrets. Wiring only: no torch,
no medops imports. Compile: `python components/medops_kfp.py` (writes
`components/<family>_pipeline.yaml`, committed; a test recompiles and diffs).
"""


import sys
from typing import Optional
from pathlib import Path

import yaml
from kfp import compiler, dsl, kubernetes

ROOT = Path(__file__).resolve().parents[1]


def load_params(project: Path = ROOT) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


def _image() -> str:
    return load_params()["orchestration"]["kubernetes"]["image"]


@dsl.component(base_image=_image())
def medops_step(project_dir: str, args: list, medops_bin: str = "medops") -> str:
    """Run `medops <args>` in the project directory; fail the step when the CLI fails."""
    import shlex
    import subprocess

    cmd = [medops_bin, *[str(a) for a in args]]
    print("+", " ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = subprocess.run(cmd, cwd=project_dir, capture_output=True, text=True)
    print(proc.stdout[-20000:], proc.stderr[-20000:], sep="\n", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"medops {' '.join(map(str, args))} failed with exit code {proc.returncode}")
    return proc.stdout[-2000:]


def _on_cluster(task, kcfg: dict, gpus: int = 0):
    """Resources, GPU scheduling, project volume and Secrets for one step (ignored by the local runner)."""
    task.set_cpu_request(kcfg["cpu_request"]).set_cpu_limit(kcfg["cpu_limit"])
    task.set_memory_request(kcfg["memory_request"]).set_memory_limit(kcfg["memory_limit"])
    task.set_retry(num_retries=2)
    if gpus:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
        kubernetes.add_toleration(task, key=kcfg["gpu_toleration"], operator="Exists", effect="NoSchedule")
        for k, v in kcfg["node_selector"].items():
            kubernetes.add_node_selector(task, label_key=k, label_value=v)
    kubernetes.mount_pvc(task, pvc_name=kcfg["data_pvc"], mount_path="/workspace")
    kubernetes.use_secret_as_env(task, secret_name="medops-mlflow", secret_key_to_env={
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"})
    kubernetes.use_secret_as_env(task, secret_name="medops-s3", secret_key_to_env={
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    return task


def build_pipeline(family: str, params: Optional[dict] = None):
    """validate -> preprocess -> train + one task per ablation cell -> evaluate -> report -> promote."""
    params = params or load_params()
    datasets = list(params["orchestration"]["datasets"][family])
    backbones = list((params.get(family, {}) or {}).get("pretrain", {}).get("backbones", []) or [])
    kcfg = params["orchestration"]["kubernetes"]
    gpus = int(kcfg.get("gpus_per_training_task", 1))
    abl = params.get("ablation", {}).get(family, {})
    cells = [(c, int(s)) for c in abl.get("cells", {}) for s in abl.get("seeds", [])]

    @dsl.pipeline(name=f"medops-{family.replace('_', '-')}",
                  description=f"medops {family}: the same CLI verbs as dvc.yaml and the Airflow DAG")
    def pipeline(project_dir: str = "/workspace", medops_bin: str = "medops"):
        def step(name: str, args: list, gpu: int = 0):
            extra = ["--nproc", str(gpu)] if gpu > 1 else []
            t = medops_step(project_dir=project_dir, args=args + extra, medops_bin=medops_bin)
            t.set_display_name(name).set_caching_options(False)
            return _on_cluster(t, kcfg, gpus=gpu)

        prepared = []
        for d in datasets:
            suffix = "" if len(datasets) == 1 else f"-{d}"
            validate = step(f"validate{suffix}", ["validate", "--dataset", d])
            prepared.append(step(f"preprocess{suffix}", ["preprocess", "--dataset", d]).after(validate))
        pretrain = [step(f"pretrain-{b}", ["train", family, "--pretrain", b], gpu=gpus).after(*prepared)
                    for b in backbones]
        ready = pretrain or prepared
        train = step("train", ["train", family], gpu=gpus).after(*ready)
        evaluate = step("evaluate", ["evaluate", family]).after(train)
        cell_tasks = [step(f"ablate-{c}-{s}", ["train", family, "--cell", c, "--seed", str(s)], gpu=gpus)
                      .after(*ready) for c, s in cells]
        report = step("report", ["report", family]).after(evaluate, *cell_tasks)
        step("promote", ["promote", family]).after(report)

    return pipeline


def compile_all(out_dir: Path = ROOT / "components") -> list[Path]:
    params = load_params()
    paths = []
    for family in params["orchestration"]["families"]:
        path = out_dir / f"{family}_pipeline.yaml"
        compiler.Compiler().compile(build_pipeline(family, params), str(path))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in compile_all(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "components"):
        print(p)
