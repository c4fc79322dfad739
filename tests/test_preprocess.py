import dataclasses
import json

import numpy as np
import pandas as pd

from medops.preprocess.breast_trimodal import preprocess_dataset
from medops.preprocess.shards import normalise


def test_shards_are_normalised_resized_and_registered(preprocessed, smoke_cfg):
    idx = pd.read_parquet(preprocessed / "index.parquet")
    z = np.load(preprocessed / idx.shard.iloc[0])
    s = smoke_cfg.preprocess.image_size
    assert z["image"].shape == (3, s, s) and z["mask"].shape == (s, s)
    assert 0.0 <= float(z["image"].min()) and float(z["image"].max()) <= 1.0
    assert set(np.unique(z["mask"])) <= {0, 1}
    # registration reduces the simulated misregistration (residual against the known transform)
    assert idx.reg_error_after_px.median() < 0.5 * idx.reg_error_before_px.median()
    stats = json.loads((preprocessed / "preprocess.json").read_text())
    assert stats["reg_error_after_px"] < stats["reg_error_before_px"]


def test_cache_skips_unchanged_cases_and_recomputes_changed(tmp_path, dataset_copy, smoke_cfg):
    cfg = dataclasses.replace(smoke_cfg.preprocess, workers=1)
    out = tmp_path / "pre"
    preprocess_dataset(dataset_copy, out, cfg, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.npz")}
    preprocess_dataset(dataset_copy, out, cfg, progress=False)
    assert json.loads((out / "preprocess.json").read_text())["computed"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.npz")} == mtimes
    # change one input image: exactly one case is recomputed
    case = sorted((dataset_copy / "us").glob("*.png"))[0]
    from medops.data.io import read_image, write_png

    write_png(case, 255 - read_image(case))
    preprocess_dataset(dataset_copy, out, cfg, progress=False)
    assert json.loads((out / "preprocess.json").read_text())["computed"] == 1


def test_normalise_range():
    a = np.random.default_rng(0).normal(100, 10, (32, 32))
    n = normalise(a)
    assert n.min() == 0.0 and n.max() == 1.0
    assert np.all(normalise(np.ones((4, 4))) == 0)
