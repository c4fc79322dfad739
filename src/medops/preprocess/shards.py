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



def require_current(pre_dir: str | Path, validation: dict) -> None:
    """Refuse preprocessed data made from other raw content than the one validated now (the raw data
    was regenerated or changed after preprocessing)."""
    import json

    stats_file = Path(pre_dir) / "preprocess.json"
    made_from = json.loads(stats_file.read_text()).get("validated_content_sha256") if stats_file.exists() else None
    if made_from != validation.get("content_sha256"):
        raise DataError(str(pre_dir), "preprocessed_current: the preprocessed data was made from other raw data "
                        "than the data validated now (stale)", "run `medops preprocess` again (dvc repro does)")


def load_shard(path: str | Path) -> dict:
    """A shard's arrays; a truncated or damaged shard is named (preprocessing recomputes it)."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(str(path), f"shard_readable: damaged preprocessed shard ({type(exc).__name__})",
                        "run `medops preprocess` again: damaged shards are detected and recomputed") from exc


def shard_intact(path: Path, expected_sha256: str | None) -> bool:
    """Whether a cached shard can be reused: its SHA-256 matches the one recorded when it was written
    (or, with no record, it loads)."""
    if not path.exists():
        return False
    if expected_sha256:
        from medops.data.io import file_sha256

        return file_sha256(path) == expected_sha256
    try:
        load_shard(path)
        return True
    except DataError:
        return False


def previous_shard_digests(out: Path) -> dict:
    """shard (relative path) -> SHA-256 from the last index written under ``out``."""
    idx = Path(out) / "index.parquet"
    if not idx.exists():
        return {}
    try:
        prev = pd.read_parquet(idx)
    except Exception:
        return {}
    return dict(zip(prev.shard, prev.shard_sha256)) if "shard_sha256" in prev else {}


def add_shard_digests(index: pd.DataFrame, out: Path) -> pd.DataFrame:
    from medops.data.io import file_sha256

    return index.assign(shard_sha256=[file_sha256(Path(out) / s) for s in index.shard])
