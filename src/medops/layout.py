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

from pathlib import Path


def data_dir(dataset: str) -> Path:
    return Path("data/raw") / dataset


def preprocessed_dir(dataset: str) -> Path:
    return Path("data/preprocessed") / dataset


def contact_sheet(dataset: str) -> Path:
    return Path("reports/data") / f"{dataset}_contact_sheet.png"


def validation_dir(dataset: str) -> Path:
    return Path("reports/validation") / dataset


def model_dir(family: str) -> Path:
    return Path("models") / family


def cells_dir(family: str) -> Path:
    return model_dir(family) / "cells"


def cell_dir(family: str, cell: str, seed: int) -> Path:
    return cells_dir(family) / cell / f"seed{seed}"


def pretrained_dir(family: str, name: str) -> Path:
    return model_dir(family) / "pretrained" / name


def report_dir(family: str) -> Path:
    return Path("reports") / family


def ablation_report_dir(family: str) -> Path:
    return Path("reports/ablation") / family


def promotion_dir() -> Path:
    return Path("reports/promotion")


def promotion_file(family: str) -> Path:
    return promotion_dir() / f"{family}.json"
