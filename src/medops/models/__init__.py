"""Model registry: architectures are registered by name (see registry.py). Every module and
subpackage of ``medops.models`` is imported here, so a new architecture registers itself by existing."""

import importlib as _importlib
import pkgutil as _pkgutil

from medops.models.registry import get_model, list_models, register_model  # noqa: F401

for _m in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name != "registry":
        _importlib.import_module(f"{__name__}.{_m.name}")
