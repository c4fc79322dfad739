"""Every path convention of a medops project, relative to the project root (the working directory).

    data/raw/<dataset>/                 raw (DVC-tracked) dataset: images + manifest
    data/preprocessed/<dataset>/        content-addressed shards + index.parquet
    reports/data/<dataset>_contact_sheet.png
    reports/validation/<dataset>/       the gate's summary.json + Great Expectations Data Docs
    models/<family>/                    main model: best.pt, last.pt, run.json, history.csv
    models/<family>/cells/<cell>/seed<n>/   one ablation cell
    models/<family>/pretrained/<name>/  a pretraining run (e.g. a source-domain backbone)
    reports/<family>/                   test metrics, per-case CSV, figures of the main model
    reports/ablation/<family>/          the paper-shaped ablation report
    reports/promotion/<family>.json     the last promotion decision
"""

from __future__ import annotations

import re
from pathlib import Path

from medops.errors import DataError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ID_RULE = ("safe_identifier: 1-128 characters from letters, digits, '.', '_' and '-', starting with a letter or "
           "digit, no path separators and no '..'")


def is_safe_id(value) -> bool:
    """Whether ``value`` may become a file or folder name (one rule for case, patient, dataset, cell and
    model names)."""
    return isinstance(value, str) and bool(SAFE_ID.match(value)) and ".." not in value


def safe_id(value, what: str = "identifier") -> str:
    if not is_safe_id(value):
        raise DataError(f"{what} {value!r}", ID_RULE, f"rename the {what} (e.g. {_suggest(value)!r})")
    return value


def _suggest(value) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).replace("..", "_").lstrip("._-")
    return s[:128] or "case_0001"


def file_in(folder: Path, name: str, suffix: str = "", what: str = "case id") -> Path:
    """``folder/<name><suffix>`` for a checked ``name``: every write stays inside its folder."""
    path = Path(folder) / f"{safe_id(name, what)}{suffix}"
    if path.resolve().parent != Path(folder).resolve():
        raise DataError(str(path), ID_RULE, "use a plain name")
    return path


def data_dir(dataset: str) -> Path:
    safe_id(dataset, "dataset")
    return Path("data/raw") / dataset


def preprocessed_dir(dataset: str) -> Path:
    safe_id(dataset, "dataset")
    return Path("data/preprocessed") / dataset


def contact_sheet(dataset: str) -> Path:
    return file_in(Path("reports/data"), dataset, "_contact_sheet.png", "dataset")


def validation_dir(dataset: str) -> Path:
    safe_id(dataset, "dataset")
    return Path("reports/validation") / dataset


def model_dir(family: str) -> Path:
    safe_id(family, "model family")
    return Path("models") / family


def cells_dir(family: str) -> Path:
    return model_dir(family) / "cells"


def cell_dir(family: str, cell: str, seed: int) -> Path:
    return cells_dir(family) / safe_id(cell, "ablation cell") / f"seed{int(seed)}"


def pretrained_dir(family: str, name: str) -> Path:
    return model_dir(family) / "pretrained" / safe_id(name, "pretraining name")


def report_dir(family: str) -> Path:
    return Path("reports") / safe_id(family, "model family")


def ablation_report_dir(family: str) -> Path:
    return Path("reports/ablation") / safe_id(family, "model family")


def promotion_dir() -> Path:
    return Path("reports/promotion")


def promotion_file(family: str) -> Path:
    return file_in(promotion_dir(), family, ".json", "model family")
