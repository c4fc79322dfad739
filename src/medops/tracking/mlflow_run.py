"""Runs, batched metric logging, artifacts and models in MLflow.

Embedded default: a sqlite store (``mlflow.db``) and an artifact folder
(``mlartifacts/``) in the project. When ``MLFLOW_TRACKING_URI`` is set the same
code logs to that server. Experiment per family; run name ``<family>/<cell>``;
tags: git commit, dataset DVC hash, profile.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from medops.errors import ConfigError, redact


def tracking_uri(root: str | Path = ".") -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(root).resolve() / 'mlflow.db').as_posix()}"


def _check_server(uri: str) -> None:
    if not uri.startswith("http"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
            r.read()
    except Exception as exc:
        raise ConfigError(f"MLFLOW_TRACKING_URI={redact(uri)}", f"tracking server unreachable ({redact(str(exc))})",
                          "start the MLflow server or unset MLFLOW_TRACKING_URI to use the local store") from exc


def _mlflow(root: str | Path = "."):
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # medops models are tensors only
    import mlflow

    uri = tracking_uri(root)
    _check_server(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow


def prepare_store(root: str | Path = ".") -> None:
    """Create the local store's tables now. A fresh ``mlflow.db`` is created and migrated by its first client;
    two runs that start at the same moment (ablation stages run two at a time) would both create the tables,
    and one of them fails ("table ... already exists"). A tracking server needs nothing."""
    if tracking_uri(root).startswith("sqlite"):
        _mlflow(root).search_experiments(max_results=1)


def _experiment_id(mlflow, name: str, root: Path) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    kw = {}
    if tracking_uri(root).startswith("sqlite"):
        kw["artifact_location"] = (root.resolve() / "mlartifacts" / name).as_uri()
    try:
        return mlflow.create_experiment(name, **kw)
    except Exception:    # noqa: BLE001 - created meanwhile by a run started at the same time (cells at once)
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit(root: str | Path = ".") -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def dataset_version(data_path: str | Path, root: str | Path = ".") -> str:
    """The dataset's DVC hash from dvc.lock, else the manifest's sha256."""
    lock = Path(root) / "dvc.lock"
    rel = os.path.relpath(Path(data_path).resolve(), Path(root).resolve())
    if lock.exists():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for st in stages.values():
            for out in st.get("outs", []):
                if out.get("path") == rel and out.get("md5"):
                    return f"dvc:{out['md5']}"
    from medops.data.io import file_sha256

    return f"manifest:{file_sha256(Path(data_path) / 'manifest.parquet')}"


def start_or_resume_run(family: str, run_name: str, *, tags: dict, root: str | Path = ".", prefix: str = "",
                        run_id: str | None = None, parent_run_id: str | None = None):
    """Start ``run_name`` in experiment ``prefix+family`` (as a child of ``parent_run_id``) or resume ``run_id``."""
    root = Path(root)
    mlflow = _mlflow(root)
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        exp = _experiment_id(mlflow, prefix + family, root)
        run = mlflow.start_run(experiment_id=exp, run_name=run_name, parent_run_id=parent_run_id)
    mlflow.set_tags({k: str(v) for k, v in tags.items()})
    return run


def run_status(run_id: str, root: str | Path = ".") -> str | None:
    """FINISHED | RUNNING | FAILED | KILLED | SCHEDULED, or None when the run does not exist."""
    mlflow = _mlflow(root)
    try:
        return mlflow.tracking.MlflowClient().get_run(run_id).info.status
    except Exception:
        return None


def mark_run(run_id: str, status: str, reason: str, root: str | Path = ".") -> None:
    """End a run left RUNNING by a killed process (e.g. superseded by a new training), with the reason."""
    mlflow = _mlflow(root)
    client = mlflow.tracking.MlflowClient()
    client.set_tag(run_id, "failure_reason", reason[:5000])
    client.set_terminated(run_id, status=status)


def ablation_parent_run(family: str, ablation, tags: dict, *, root: str | Path = ".", prefix: str = "") -> str:
    """Find or create the parent run of this ablation (same family, profile, data and ablation spec)."""
    import hashlib
    from dataclasses import asdict

    root = Path(root)
    mlflow = _mlflow(root)
    from mlflow.tracking import MlflowClient

    spec = json.dumps({"ablation": asdict(ablation), "profile": tags.get("profile"),
                       "dataset_version": tags.get("dataset_version")}, sort_keys=True, default=list)
    key = hashlib.sha256(spec.encode()).hexdigest()[:16]
    exp = _experiment_id(mlflow, prefix + family, root)
    client = MlflowClient()
    found = client.search_runs([exp], filter_string=f"tags.ablation_key = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(exp, run_name=f"{family}/ablation", tags={
        "ablation_key": key, "ablation_parent": "true", "family": family,
        **{k: str(v) for k, v in tags.items() if k in ("profile", "dataset_version", "git_commit", "dataset")}})
    client.log_text(run.info.run_id, spec, "ablation_spec.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def parent_of(run_id: str) -> str | None:
    _mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(run_id).data.tags.get("mlflow.parentRunId")


def log_artifacts_to(run_id: str, folder: str | Path, artifact_path: str) -> None:
    _mlflow()
    from mlflow.tracking import MlflowClient

    MlflowClient().log_artifacts(run_id, str(folder), artifact_path)


def log_params_and_config(config: dict) -> None:
    import mlflow

    flat = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = str(v)[:500]
    walk(config)
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]))
    mlflow.log_dict(config, "config/resolved_params.json")


def log_new_params(params: dict) -> None:
    """Params of the active run not logged yet (a resumed run keeps what its first attempt logged; where the
    retry differs — e.g. data resident on another device — the new value goes to a ``resumed.`` tag)."""
    import mlflow

    run = mlflow.active_run()
    have = mlflow.get_run(run.info.run_id).data.params
    new = {k: str(v) for k, v in params.items() if k not in have}
    if new:
        mlflow.log_params(new)
    changed = {f"resumed.{k}": str(v) for k, v in params.items() if k in have and have[k] != str(v)}
    if changed:
        mlflow.set_tags(changed)


class MlflowLogger:
    """Per-epoch metrics in one batched call (``MlflowClient.log_batch``)."""

    def __init__(self, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(), run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v == v]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    p = Path(path)
    if p.is_dir():
        mlflow.log_artifacts(str(p), artifact_path)
    else:
        mlflow.log_artifact(str(p), artifact_path)


def log_model(net, activation, input_example, name: str = "model") -> str:
    """Log ``net`` + its output ``activation`` as a safe model (safetensors, no pickle); returns the URI."""
    from medops.tracking.models import log_safe_model

    return log_safe_model(net, activation, input_example, name)


def log_metrics(metrics: dict) -> None:
    """Log finite numeric metrics to the active run."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v})


def end_run(status: str = "FINISHED", reason: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is None:
        return
    if reason:
        mlflow.set_tag("failure_reason", reason[:5000])
    mlflow.end_run(status=status)


def ui_command(root: str | Path = ".", run: dict | None = None) -> str:
    uri = tracking_uri(root)
    url = ""
    if run:
        url = f"  then open http://127.0.0.1:5000/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
    uri = redact(uri)
    if uri.startswith("sqlite"):
        return f".venv/bin/mlflow ui --backend-store-uri {uri} --port 5000{url}"
    return f"open {uri}" + (f"/#/experiments/{run['experiment_id']}/runs/{run['run_id']}" if run else "")


def write_run_file(path: Path, run) -> dict:
    info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": redact(tracking_uri())}
    path.write_text(json.dumps(info, indent=2))
    return info
