"""`medops preprocess`: the paper preprocessing of the dataset's family (validated data only)."""

from __future__ import annotations

from medops import layout
from medops.families import family_of_dataset
from medops.validation import require_passed


def preprocess(cfg, dataset: str):
    """Shards + index under data/preprocessed/<dataset>; returns ``(index, one-line summary)``."""
    root = layout.data_dir(dataset)
    require_passed(root, layout.validation_dir(dataset))
    return family_of_dataset(cfg, dataset).preprocess(cfg, root, layout.preprocessed_dir(dataset))
