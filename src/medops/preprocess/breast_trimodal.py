"""Preprocessing per paper 000 Table 2, cached as content-addressed shards.

Per case: intensity normalisation to [0, 1]; median filter on US; CLAHE on
MG; rigid registration of MRI onto the US reference (SimpleITK, mutual
information); resize to the profile's size. Each case becomes one ``.npz``
shard named by the hash of its input files, the preprocessing parameters and
``PREPROCESS_VERSION``: unchanged inputs are never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from skimage import exposure

from medops.data.breast_trimodal import MODALITIES as IMAGE_MODALITIES
from medops.data.io import file_sha256, read_image, resolve_inside
from medops.errors import DataError
from medops.preprocess.shards import add_shard_digests, normalise, previous_shard_digests, run_jobs, shard_intact
from medops.preprocess.registration import euler_matrix, mean_displacement, register_rigid





PREPROCESS_VERSION = "1"


def preprocess_case(images: dict[str, np.ndarray], mask: np.ndarray | None, cfg):
    """Return (stack [3,S,S] float32 in [0,1], mask [S,S] uint8 or None, registration params)."""
    ref = images["us"].shape
    us = cv2.medianBlur(images["us"].astype(np.uint8), cfg.us_median_kernel) if images["us"].dtype == np.uint8 \
        else cv2.medianBlur((normalise(images["us"]) * 255).astype(np.uint8), cfg.us_median_kernel)
    us = normalise(us, 0, 100)
    mg = exposure.equalize_adapthist(normalise(images["mg"]), kernel_size=cfg.mg_clahe_kernel,
                                     clip_limit=cfg.mg_clahe_clip).astype(np.float32)
    mg = cv2.resize(mg, (ref[1], ref[0]), interpolation=cv2.INTER_AREA)
    mri = normalise(images["mri"])
    if mri.shape != ref:
        mri = cv2.resize(mri, (ref[1], ref[0]), interpolation=cv2.INTER_AREA)
    fixed = cv2.GaussianBlur(us, (0, 0), 2.0)  # speckle-free structure for the metric
    mri_reg, params = register_rigid(fixed, mri, cfg.registration_iterations, cfg.registration_shrink)
    mri_reg = np.clip(mri_reg, 0, 1)
    s = cfg.image_size
    stack = np.stack([cv2.resize(x, (s, s), interpolation=cv2.INTER_AREA) for x in (us, mg, mri_reg)])
    m = None
    if mask is not None:
        m = (cv2.resize((mask > 0).astype(np.float32), (s, s), interpolation=cv2.INTER_AREA) >= 0.5).astype(np.uint8)
    return stack.astype(np.float32), m, params


def _cache_key(hashes: list[str], cfg) -> str:
    h = hashlib.sha256()
    h.update(PREPROCESS_VERSION.encode())
    h.update(json.dumps(asdict(cfg), sort_keys=True, default=list).encode())
    for x in hashes:
        h.update(x.encode())
    return h.hexdigest()[:32]


def _work(args):
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    case_id, paths, shard, cfg = args
    images = {m: read_image(paths[m]) for m in IMAGE_MODALITIES}
    mask = read_image(paths["mask"]) if "mask" in paths else None
    stack, m, params = preprocess_case(images, mask, cfg)
    tmp = shard.with_suffix(".tmp.npz")
    np.savez(tmp, image=stack.astype(np.float16), mask=m if m is not None else np.zeros(0, np.uint8),
             reg=np.array(params, dtype=np.float64))
    os.replace(tmp, shard)  # atomic: a crash never leaves a half-written shard
    return case_id




def preprocess_dataset(root: str | Path, out: str | Path, cfg, progress: bool = True) -> pd.DataFrame:
    """Preprocess every case of the manifest into ``out/shards``; write ``out/index.parquet``."""
    root, out = Path(root), Path(out)
    manifest = pd.read_parquet(root / "manifest.parquet")
    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    rows, todo = [], []
    recorded = previous_shard_digests(out)  # a cached shard is reused only if it is intact
    for case_id, g in manifest.groupby("case_id", sort=True):
        paths = {r.modality: resolve_inside(root, r.path) for r in g.itertuples()}
        missing = set(IMAGE_MODALITIES) - set(paths)
        if missing:
            raise DataError(case_id, f"all_modalities: missing {sorted(missing)}", "run `medops validate` and fix the case")
        key = _cache_key([file_sha256(paths[m]) for m in sorted(paths)], cfg)
        shard = shards_dir / f"{key}.npz"
        rows.append({"case_id": case_id, "patient_id": g.patient_id.iloc[0], "split": g.split.iloc[0],
                     "shard": f"shards/{key}.npz"})
        if not shard_intact(shard, recorded.get(f"shards/{key}.npz")):
            todo.append((case_id, paths, shard, cfg))
    run_jobs(_work, todo, cfg.workers, progress, chunksize=2)
    index = pd.DataFrame(rows)
    index = _add_registration_error(index, root, out, manifest)
    index = add_shard_digests(index, out)
    index.to_parquet(out / "index.parquet", index=False)
    stats = {"n_cases": int(len(index)), "computed": len(todo), "cached": int(len(index) - len(todo)),
             "image_size": cfg.image_size}
    if "reg_error_after_px" in index:
        stats.update(reg_error_before_px=float(index.reg_error_before_px.mean()),
                     reg_error_after_px=float(index.reg_error_after_px.mean()),
                     reg_error_after_px_median=float(index.reg_error_after_px.median()))
    (out / "preprocess.json").write_text(json.dumps(stats, indent=2))
    return index


def _add_registration_error(index: pd.DataFrame, root: Path, out: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """Residual registration error against the simulated transform, where the truth is known."""
    truth_path = root / "cases.parquet"
    if not truth_path.exists():
        return index
    truth = pd.read_parquet(truth_path).set_index("case_id")
    n = int(manifest[manifest.modality == "us"].height.iloc[0])
    before, after = [], []
    for r in index.itertuples():
        t = truth.loc[r.case_id]
        A = euler_matrix(np.deg2rad(t.mri_rotation_deg), t.mri_tx_px, t.mri_ty_px, n)  # MRI -> US
        true_f2m = np.linalg.inv(A)  # US (fixed) point -> MRI (moving) point
        est = euler_matrix(*np.load(out / r.shard)["reg"], n)
        before.append(mean_displacement(np.eye(3), true_f2m, n))
        after.append(mean_displacement(est, true_f2m, n))
    return index.assign(reg_error_before_px=before, reg_error_after_px=after)
