"""CT nodule patches (paper 004 section 4.1), cached as content-addressed shards.

Input: a folder with one DICOM CT series per case (``<case>/series/``, listed in ``manifest.parquet``)
and ``nodules.csv`` (``case_id, nodule_id, x_mm, y_mm, z_mm, label`` with the centre in patient
coordinates). Per nodule: the ``cube``^3 patch around the centre, resampled to ``spacing_mm`` isotropic
first when it is set (SimpleITK linear resampling; 0 keeps the scan's own spacing), voxels outside the
scanned volume filled with air (-1000 HU; how many is counted and logged), then Eq. 14's window
-1000..400 HU -> 0..1 (MONAI ``ScaleIntensityRange``). The smaller scales (32/48) are central crops taken
by the models; augmentation (flips, shifts) happens at training time, on the training split only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from medops.data.io import file_sha256
from medops.errors import DataError
from medops.preprocess.shards import add_shard_digests, previous_shard_digests, run_jobs, shard_intact

PREPROCESS_VERSION = "nodule-1"
CLASSES = ["benign", "malignant"]
log = logging.getLogger("medops.preprocess")


def extract_patch(vol, centre_xyz_mm, cube: int, spacing_mm: float) -> tuple[np.ndarray, float]:
    """(cube^3 float32 HU patch centred on the point, share of its voxels outside the scan)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(vol.hu)                       # array (z, y, x) -> image (x, y, z)
    img.SetSpacing((vol.spacing[2], vol.spacing[1], vol.spacing[0]))
    img.SetOrigin(tuple(float(v) for v in vol.origin))
    out_sp = (spacing_mm,) * 3 if spacing_mm > 0 else (vol.spacing[2], vol.spacing[1], vol.spacing[0])
    origin = [float(c) - (cube - 1) / 2 * s for c, s in zip(centre_xyz_mm, out_sp)]
    rs = sitk.ResampleImageFilter()
    rs.SetSize([cube] * 3)
    rs.SetOutputSpacing(out_sp)
    rs.SetOutputOrigin(origin)
    rs.SetOutputDirection(img.GetDirection())
    rs.SetInterpolator(sitk.sitkLinear)
    rs.SetDefaultPixelValue(-1000.0)
    patch = sitk.GetArrayFromImage(rs.Execute(img)).astype(np.float32)
    inside = sitk.Image(img.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(img)
    rs.SetInterpolator(sitk.sitkNearestNeighbor)
    rs.SetDefaultPixelValue(0)
    covered = sitk.GetArrayFromImage(rs.Execute(inside))
    return patch, float(1.0 - covered.mean())


def window(patch: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Eq. 14 with MONAI: HU lo..hi -> 0..1, clipped."""
    from monai.transforms import ScaleIntensityRange

    return np.asarray(ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(patch), np.float32)


def _key(files: list[Path], nodule: dict, cfg) -> str:
    h = hashlib.sha256()
    h.update(PREPROCESS_VERSION.encode())
    h.update(json.dumps({k: v for k, v in asdict(cfg).items() if k != "workers"}, sort_keys=True).encode())
    h.update(json.dumps(nodule, sort_keys=True, default=str).encode())
    for f in files:
        h.update(file_sha256(f).encode())
    return h.hexdigest()[:32]


def _work(args):
    root, case_id, nods, shards, cfg = args
    from medops.data.dicom_series import read_series

    case_dir = Path(root) / case_id
    vol = read_series(case_dir / "series" if (case_dir / "series").is_dir() else case_dir)
    out = []
    for n, shard in zip(nods, shards):
        patch, pad = extract_patch(vol, (n["x_mm"], n["y_mm"], n["z_mm"]), cfg.cube, cfg.spacing_mm)
        img = window(patch, cfg.hu_min, cfg.hu_max)[None]
        tmp = shard.with_suffix(".tmp.npz")
        np.savez(tmp, image=img.astype(np.float16), mask=np.zeros(0, np.uint8),
                 label=np.int64(CLASSES.index(n["label"])), padded_fraction=np.float32(pad))
        os.replace(tmp, shard)
        out.append(pad)
    return out


def read_nodules(root: Path) -> pd.DataFrame:
    path = Path(root) / "nodules.csv"
    if not path.exists():
        raise DataError(str(path), "nodules_table: no nodules.csv", "write one row per nodule: case_id, nodule_id, "
                        "x_mm, y_mm, z_mm (centre, patient coordinates), label (benign | malignant)")
    return pd.read_csv(path, dtype={"case_id": str, "nodule_id": str, "patient_id": str})


def assign_folds(nod: pd.DataFrame, k: int, seed: int) -> pd.Series:
    """Patient-level folds, stratified by whether the patient has a malignant nodule (nodules.csv without folds)."""
    from medops.data.splits import patient_folds

    return nod.patient_id.map(patient_folds(nod.patient_id, nod.label == "malignant", k, seed))


def preprocess_nodules(root: str | Path, out: str | Path, cfg, *, manifest: pd.DataFrame | None = None,
                       fold_seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Patches of every labelled nodule under ``root`` -> shards + ``index.parquet`` under ``out``.
    ``manifest``: the slice files per case (default: ``root/manifest.parquet``)."""
    root, out = Path(root), Path(out)
    man = manifest if manifest is not None else pd.read_parquet(root / "manifest.parquet")
    nod = read_nodules(root)
    if "patient_id" not in nod:
        nod = nod.merge(man.drop_duplicates("case_id")[["case_id", "patient_id"]], on="case_id", how="left")
    if "fold" not in nod or nod.fold.isna().any():
        nod["fold"] = assign_folds(nod, cfg.folds, fold_seed)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    recorded = previous_shard_digests(out)
    cases = man.groupby("case_id", sort=True)
    rows, todo = [], []
    for case_id, g in nod.groupby("case_id", sort=True):
        files = sorted(root / p for p in cases.get_group(case_id).path)
        split = cases.get_group(case_id).split.iloc[0]
        need, shards = [], []
        for n in g.to_dict("records"):
            key = _key(files, {k: n[k] for k in ("nodule_id", "x_mm", "y_mm", "z_mm", "label")}, cfg)
            shard = out / "shards" / f"{key}.npz"
            rows.append({"case_id": case_id, "nodule_id": n["nodule_id"],
                         "patient_id": str(n.get("patient_id", case_id)), "split": split,
                         "fold": int(n["fold"]) if "fold" in n and n["fold"] == n["fold"] else -1,
                         "label": n["label"], "label_idx": CLASSES.index(n["label"]), "shard": f"shards/{key}.npz",
                         "has_mask": False, **{k: n[k] for k in ("diameter_mm", "texture_class", "calcified", "malignancy") if k in n}})
            if not shard_intact(shard, recorded.get(f"shards/{key}.npz")):
                need.append({k: n[k] for k in ("x_mm", "y_mm", "z_mm", "label")})
                shards.append(shard)
        if need:
            todo.append((str(root), case_id, need, shards, cfg))
    run_jobs(_work, todo, cfg.workers, progress, chunksize=1, desc="preprocess nodules")
    index = pd.DataFrame(rows)
    index["padded_fraction"] = [float(np.load(out / s)["padded_fraction"]) for s in index.shard]
    index = add_shard_digests(index, out)
    index.to_parquet(out / "index.parquet", index=False)
    n_pad = int((index.padded_fraction > 0).sum())
    if n_pad:
        log.warning("%d of %d patches cross the scanned volume: padded with air (-1000 HU), at most %.0f %% of a patch",
                    n_pad, len(index), 100 * index.padded_fraction.max())
    computed = sum(len(t[2]) for t in todo)
    stats = {"n_cases": int(len(index)), "n_scans": int(index.case_id.nunique()), "computed": computed,
             "cached": int(len(index) - computed), "cube": cfg.cube, "spacing_mm": cfg.spacing_mm,
             "resampled": cfg.spacing_mm > 0, "window_hu": [cfg.hu_min, cfg.hu_max], "classes": CLASSES,
             "class_counts": {c: int((index.label == c).sum()) for c in CLASSES},
             "split_counts": {s: {c: int(((index.split == s) & (index.label == c)).sum()) for c in CLASSES}
                              for s in ("train", "val", "test")},
             "padded_patches": n_pad, "padded_voxels_max_fraction": float(index.padded_fraction.max())}
    (out / "preprocess.json").write_text(json.dumps(stats, indent=2))
    return index
