"""MLflow pyfunc flavour of a medops model, without pickle: ``mlflow models serve -m models:/<family>@champion``
(with medops installed in the serving environment) loads the network by name and its tensors from
safetensors through :func:`_load_pyfunc`. ``medops predict`` does not use this path: it also checks the
SHA-256 digests recorded at registration before loading anything."""

from __future__ import annotations

from pathlib import Path


class _PyfuncModel:
    def __init__(self, module):
        self.module = module

    def predict(self, model_input, params=None):
        import numpy as np
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.module(x).numpy()


def _load_pyfunc(data_path: str):
    from medops.tracking.models import load_safe_model_dir

    return _PyfuncModel(load_safe_model_dir(Path(data_path)))
