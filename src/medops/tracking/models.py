"""Registered/logged models as medops sees them: resolve a model URI to its run (family, params,
preprocessing), load the network, download its files. The verb modules never import mlflow."""

from __future__ import annotations

import json
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
    digests: dict | None = None   # SHA-256 per file, recorded when the model was logged / registered

    @property
    def family(self) -> str | None:
        return self.tags.get("family")

    def load(self):
        """The network rebuilt by name with its tensors (``Sequential(net, activation)``, eval mode), after
        checking every downloaded file against the recorded digests. Nothing is unpickled."""
        import tempfile

        if not self.digests:
            raise DataError(self.uri, "model_integrity: no SHA-256 digests recorded for this model (logged before "
                            "medops stored models as safetensors, or not by medops)",
                            "re-train and re-register it with this medops version")
        with tempfile.TemporaryDirectory(prefix="medops-load-") as dst:  # the tensors end up in memory
            local = self.download("model", Path(dst))
            verify_digests(local, self.digests, self.uri)
            return load_safe_model_dir(local / "data" / DATA_DIR)

    def download(self, artifact_path: str, dst: Path) -> Path:
        from medops.tracking.registry import download

        return download(self.run_id, artifact_path, dst)


def resolve_model(uri: str) -> ModelRef:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``runs:/<run>/model`` -> its run, with the
    SHA-256 digests recorded on the model version (or, for a run URI, on the run)."""
    mlflow = _mlflow()
    client = mlflow.tracking.MlflowClient()
    fix = "check the name/alias (e.g. models:/<family>@champion) and MLFLOW_TRACKING_URI"
    try:
        if uri.startswith("models:/"):
            name, _, ref = uri[len("models:/"):].replace("@", "/@").partition("/")
            mv = client.get_model_version_by_alias(name, ref[1:]) if ref.startswith("@") \
                else client.get_model_version(name, ref)
            run_id, version, recorded = mv.run_id, str(mv.version), mv.tags.get("model_sha256")
        elif uri.startswith("runs:/"):
            run_id, version, recorded = uri[len("runs:/"):].split("/", 1)[0], None, None
        else:
            raise ValueError("use a models:/ or runs:/ URI")
        run = client.get_run(run_id)
    except Exception as exc:
        raise DataError(uri, f"model_exists: cannot resolve the model ({exc})", fix) from exc
    recorded = recorded or run.data.tags.get("model_sha256")
    return ModelRef(uri, run_id, dict(run.data.params), dict(run.data.tags), version,
                    json.loads(recorded) if recorded else None)


# ---------------------------------------------------------------- the safe model format
SAFE_FORMAT = "medops-safe-1"
ACTIVATIONS = {"Sigmoid", "Softmax", "Identity"}   # what a saved model may put after the network
DATA_DIR = "medops_model"                          # inside the logged MLflow model folder


def save_safe_model_dir(net, activation, out: Path) -> None:
    """``out/weights.safetensors`` (tensors only) + ``out/medops_model.json`` (registered model name and
    keyword arguments, output activation): enough to rebuild the network by name without pickle."""
    from safetensors.torch import save_model

    spec = getattr(net, "medops_spec", None)
    if spec is None:
        raise DataError(type(net).__name__, "model_spec: the network was not built by name",
                        "build models with medops.models.get_model")
    act = {"name": type(activation).__name__}
    if act["name"] not in ACTIVATIONS:
        raise DataError(act["name"], "model_spec: unsupported output activation", f"use one of {sorted(ACTIVATIONS)}")
    if hasattr(activation, "dim"):
        act["dim"] = activation.dim
    out.mkdir(parents=True, exist_ok=True)
    save_model(net, str(out / "weights.safetensors"))
    (out / "medops_model.json").write_text(json.dumps({"format": SAFE_FORMAT, **spec, "activation": act},
                                                      indent=2, default=list))


def load_safe_model_dir(d: Path):
    """Rebuild the network by name and load its tensors (safetensors: no code runs); eval mode."""
    import torch.nn as nn
    from safetensors.torch import load_model

    from medops.models import get_model

    spec_file = d / "medops_model.json"
    try:
        spec = json.loads(spec_file.read_text())
        assert spec.get("format") == SAFE_FORMAT and spec["activation"]["name"] in ACTIVATIONS
    except Exception as exc:
        raise DataError(str(spec_file), "model_format: not a medops safe model description",
                        "register the model with `medops promote` (tensors as safetensors)") from exc
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["kwargs"].items()}
    net = get_model(spec["arch"], **kwargs)
    try:
        load_model(net, str(d / "weights.safetensors"), strict=True)
    except Exception as exc:
        raise DataError(str(d / "weights.safetensors"), f"model_weights: cannot load the tensors ({exc})",
                        "the file is damaged or does not match the model; re-register the model") from exc
    act = spec["activation"]
    activation = getattr(nn, act["name"])(**({"dim": act["dim"]} if "dim" in act else {}))
    return nn.Sequential(net, activation).eval()


def file_digests(folder: Path) -> dict[str, str]:
    import hashlib

    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def verify_digests(folder: Path, recorded: dict[str, str], where: str) -> None:
    """Refuse a downloaded model whose files differ from the digests recorded when it was logged."""
    found = file_digests(folder)
    for rel in sorted(set(found) | set(recorded)):
        if rel not in recorded:
            raise DataError(f"{where}/{rel}", "model_integrity: a file that was not there when the model was logged",
                            "someone wrote into the artifact store; remove the file or re-register the model")
        if rel not in found:
            raise DataError(f"{where}/{rel}", "model_integrity: a logged file is missing", "re-register the model")
        if found[rel] != recorded[rel]:
            raise DataError(f"{where}/{rel}", "model_integrity: the SHA-256 digest differs from the one recorded at "
                            "registration (the file was changed)", "do not use this model; re-register it from its run")


def log_safe_model(net, activation, input_example, name: str = "model") -> str:
    """Log the model into the active run as an MLflow pyfunc (``loader_module`` medops.serving, no pickle)
    holding a safe model folder; the SHA-256 of every file goes to the run tag ``model_sha256``."""
    import shutil
    import tempfile

    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    model = torch.nn.Sequential(net, activation).eval().cpu()
    with torch.no_grad():
        out = model(torch.from_numpy(input_example)).numpy()
    tmp = Path(tempfile.mkdtemp(prefix="medops-model-"))
    try:
        save_safe_model_dir(net, activation, tmp / DATA_DIR)
        reqs = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}",
                "safetensors", "medops"]
        mlflow.pyfunc.save_model(path=str(tmp / name), loader_module="medops.serving", data_path=str(tmp / DATA_DIR),
                                 signature=infer_signature(input_example, out), input_example=np.asarray(input_example),
                                 pip_requirements=reqs)
        digests = file_digests(tmp / name)
        mlflow.log_artifacts(str(tmp / name), name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run_id = mlflow.active_run().info.run_id
    mlflow.set_tags({"model_sha256": json.dumps(digests), "model_format": SAFE_FORMAT})
    return f"runs:/{run_id}/{name}"
