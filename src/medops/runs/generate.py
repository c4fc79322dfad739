"""`medops generate <dataset>`: simulate a dataset with its family's simulator."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medops import layout
from medops.data.io import write_folder_atomically
from medops.errors import DataError
from medops.families import family_of_dataset
from medops.locks import exclusive


def generate(cfg, dataset: str, out: Path | None = None, force: bool = False) -> pd.DataFrame:
    """Simulate ``dataset`` into ``out`` (written to a temporary folder, then moved: an existing
    dataset is replaced only with --force, and never half-overwritten); save its contact sheet."""
    fam = family_of_dataset(cfg, dataset)
    if dataset not in fam.datasets:
        raise DataError(f"dataset '{dataset}'", "not a simulated dataset (your own data is added with `dvc add`)",
                        f"use one of {list(fam.datasets)}")
    out = Path(out or layout.data_dir(dataset))
    if out.exists() and any(out.iterdir()) and not force:
        raise DataError(str(out), "no_overwrite: the output folder already holds a dataset",
                        "choose another --out, or pass --force to replace it (dvc repro removes it for you)")
    with exclusive(out, f"the dataset folder of {dataset}"):
        manifest = write_folder_atomically(out, lambda tmp: fam.generate(cfg, dataset, tmp))
    fam.contact_sheet(cfg, dataset, out, layout.contact_sheet(dataset))
    return manifest
