"""Registered/logged models as medops sees them: resolve a model URI to its run (family, params,
preprocessing), load the network, download its files. The verb modules never import mlflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medops.errors import DataError
from medops.tracking.mlflow_run import _mlflow


@dataclass
class ModelRef:
    """A model URI resolved to the run that logged it."""

    uri: str
    run_id: str
    params: dict
    tags: dict
    version: str | None

    @property
    def family(self) -> str | None:
        return self.tags.get("family")

    def load(self):
        """The logged torch module (in eval mode)."""
        import mlflow.pytorch

        return mlflow.pytorch.load_model(self.uri)

    def download(self, artifact_path: str, dst: Path) -> Path:
        from medops.tracking.registry import download

        return download(self.run_id, artifact_path, dst)


def resolve_model(uri: str) -> ModelRef:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``runs:/<run>/model`` -> its run."""
    mlflow = _mlflow()
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as exc:
        raise DataError(uri, f"model_exists: cannot resolve the model ({exc})",
                        "check the name/alias (e.g. models:/<family>@champion) and MLFLOW_TRACKING_URI") from exc
    run = mlflow.get_run(info.run_id)
    return ModelRef(uri, info.run_id, dict(run.data.params), dict(run.data.tags), _version(uri))


def _version(model_uri: str) -> str | None:
    if "@" in model_uri or model_uri.count("/") >= 2:
        try:
            from mlflow.tracking import MlflowClient

            name, ref = model_uri.split("models:/", 1)[1].replace("@", "/").split("/", 1)
            c = MlflowClient()
            return str(c.get_model_version_by_alias(name, ref).version) if "@" in model_uri else ref
        except Exception:
            return None
    return None
