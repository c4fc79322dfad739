"""MLflow Model Registry: versions, aliases (`challenger`, `champion`), tags. No stages."""

from __future__ import annotations

import json
from pathlib import Path

from medops.errors import MedopsError
from medops.tracking.mlflow_run import _mlflow


def _client():
    _mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def run_tags(run_id: str) -> dict:
    return _client().get_run(run_id).data.tags


def ensure_model_logged(run_id: str, net, activation, input_example) -> str:
    """Log the model (safe format) into ``run_id`` once; later calls return the same URI."""
    import mlflow

    from medops.tracking.mlflow_run import log_model

    client = _client()
    tags = client.get_run(run_id).data.tags
    if tags.get("model_uri") and tags.get("model_sha256"):
        return tags["model_uri"]
    with mlflow.start_run(run_id=run_id):
        uri = log_model(net, activation, input_example)
        mlflow.set_tag("model_uri", uri)
    return uri


def version_for_run(name: str, run_id: str):
    client = _client()
    try:
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except Exception:
        return None
    return max(found, key=lambda v: int(v.version)) if found else None


def register(name: str, model_uri: str, run_id: str):
    """New version of registered model ``name`` from a logged model (creates the registered model once)."""
    import mlflow

    client = _client()
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description=f"medops model family {name}")
    version = mlflow.register_model(model_uri, name)
    digests = client.get_run(run_id).data.tags.get("model_sha256")
    if digests:  # what `medops predict` checks before loading anything
        client.set_model_version_tag(name, version.version, "model_sha256", digests)
    return version


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    _client().set_registered_model_alias(name, alias, str(version))


def tag_version(name: str, version: str, tags: dict) -> None:
    client = _client()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v)[:5000])


def describe_version(name: str, version: str, text: str, full_card: str = "") -> None:
    """Version description (PostgreSQL stores at most 5,000 characters): the card, cut with a pointer."""
    if len(text) > 4800:
        text = text[:4500].rsplit("\n", 1)[0] + f"\n\n… (full model card: run artifact `{full_card}`)"
    _client().update_model_version(name, version, description=text)


def champion_history(name: str) -> list[str]:
    try:
        return [str(v) for v in json.loads(_client().get_registered_model(name).tags.get("champion_history", "[]"))]
    except Exception:
        return []


def set_champion_history(name: str, history: list[str]) -> None:
    _client().set_registered_model_tag(name, "champion_history", json.dumps(history))


def version_run_id(name: str, version: str) -> str:
    return _client().get_model_version(name, version).run_id


def download(run_id: str, artifact_path: str, dst: Path) -> Path:
    import mlflow

    _mlflow()
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))
    except Exception as exc:
        raise MedopsError(f"run {run_id}", f"artifact '{artifact_path}' not found ({exc})",
                          "re-run the cell so its per-case metrics are logged") from exc


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    _client().log_text(run_id, text, artifact_file)
