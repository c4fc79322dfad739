"""A decorator registry of model builders, after torchvision's ``models/_api.py``."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from medops.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def wrap(fn: Callable[..., nn.Module]):
        if name in _MODELS:
            raise ValueError(f"model '{name}' is already registered")
        _MODELS[name] = fn
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def get_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; the module remembers how (``medops_spec``: name + keyword
    arguments), so a saved model is rebuilt by name and gets tensors only, never pickled code."""
    if name not in _MODELS:
        raise ConfigError(f"model '{name}'", "not a registered model", f"use one of {list_models()}")
    net = _MODELS[name](**kwargs)
    net.medops_spec = {"arch": name, "kwargs": kwargs}
    return net
