"""`medops validate`: the Great Expectations gate with the rules of the dataset's family."""

from __future__ import annotations

from pathlib import Path

from medops import layout
from medops.errors import ConfigError
from medops.families import family_of_dataset
from medops.validation import validate_dataset


def validate(cfg, dataset: str, data: Path | None = None, report: Path | None = None) -> dict:
    """Validate ``data`` (default data/raw/<dataset>) into ``report``; raises ValidationFailed with one
    line per failure. A dataset no family knows gets the rules its layout implies."""
    root = Path(data or layout.data_dir(dataset))
    try:
        spec = family_of_dataset(cfg, dataset).validation_spec(cfg, root, dataset)
    except ConfigError:
        spec = None  # e.g. `medops validate --data folder` on data of your own
    return validate_dataset(root, cfg.validate, report or layout.validation_dir(dataset), spec=spec,
                            split_fractions=cfg.split.fractions, split_seed=cfg.split.seed)
