"""Shared set-up for benchmarks: a small preprocessed dataset in a temp folder."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from medops.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def prepared(profile: str = "quick", n_cases: int = 64):
    from medops.data.breast_trimodal import generate
    from medops.preprocess.breast_trimodal import preprocess_dataset

    cfg = load_config(ROOT / "params.yaml", profile=profile)
    tmp = Path(tempfile.mkdtemp(prefix="medops-bench-"))
    generate(dataclasses.replace(cfg.generate, n_cases=n_cases), cfg.split, tmp / "raw", progress=False)
    preprocess_dataset(tmp / "raw", tmp / "pre", cfg.preprocess, progress=False)
    return cfg, tmp / "pre"


def copy_project(dst: Path) -> Path:
    """Copy the committed project files to ``dst`` (a fresh workspace for a timed run)."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    return dst


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
