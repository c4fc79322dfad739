"""Shared pieces of every preprocessing: robust intensity scaling, a process pool with a progress bar,
and the shard index (``index.parquet``: one row per case -> its content-addressed ``.npz`` shard)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from medops.errors import DataError


def normalise(img: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Scale intensities to [0, 1] between robust percentiles."""
    a = img.astype(np.float32)
    lo, hi = np.percentile(a, [lo_pct, hi_pct])
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0, 1)


def run_jobs(fn, jobs: list, workers: int, progress: bool, chunksize: int = 2, desc: str = "preprocess") -> list:
    """Run ``fn`` over ``jobs`` in ``workers`` processes (in this process when 1), with a progress bar."""
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as ex:
            return list(tqdm(ex.map(fn, jobs, chunksize=chunksize), total=len(jobs), desc=desc, disable=not progress))
    return [fn(j) for j in tqdm(jobs, desc=desc, disable=not progress)]


def load_index(out: str | Path) -> pd.DataFrame:
    path = Path(out) / "index.parquet"
    if not path.exists():
        raise DataError(str(path), "preprocessed: no index", "run `medops preprocess` first")
    return pd.read_parquet(path)

