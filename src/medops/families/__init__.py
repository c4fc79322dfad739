"""Model families, registered by name (see base.py for the contract)."""

from medops.families.base import (  # noqa: F401
    Family, Prepared, family_of_dataset, get_family, list_families, load_plugins, register_family,
)
