"""The `nodule3d` data rules the per-image tables cannot express (the gate's ``extra_checks``):
every case folder is one readable, complete, evenly spaced CT series; ``nodules.csv`` has the columns,
known cases, known labels, finite centres inside their scan; an ``annotation.json`` names no nodule
without a contour. One line per failure: where, the rule, the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medops.errors import DataError

CLASSES = ("benign", "malignant")
COLUMNS = ("case_id", "nodule_id", "x_mm", "y_mm", "z_mm", "label")


def _line(where, rule, detail, fix) -> str:
    return f"{where}: rule {rule} failed ({detail}). Fix: {fix}"


def check_series_and_nodules(root: Path, manifest: pd.DataFrame) -> list[str]:
    from medops.data.dicom_series import read_series

    root = Path(root)
    out, vols = [], {}
    folders = manifest.assign(folder=manifest.path.map(lambda p: str(Path(p).parent))).groupby("case_id").folder
    for case_id, f in folders:
        names = sorted(set(f))
        if len(names) != 1:
            out.append(_line(case_id, "one_series_folder", f"slices in {names}", "keep each case's slices in one folder"))
            continue
        try:
            vols[case_id] = read_series(root / names[0])
        except DataError as e:
            out.append(_line(e.where, e.rule.split(":")[0], e.rule, e.fix))
    path = root / "nodules.csv"
    if not path.exists():
        return out + [_line(str(path), "nodules_table", "no nodules.csv",
                            "write one row per nodule: " + ", ".join(COLUMNS) + " (centre in patient mm)")]
    nod = pd.read_csv(path, dtype={"case_id": str, "nodule_id": str})
    missing = [c for c in COLUMNS if c not in nod.columns]
    if missing:
        return out + [_line(str(path), "nodules_columns", f"missing {missing}", f"add the columns {list(COLUMNS)}")]
    for dup in nod.nodule_id[nod.nodule_id.duplicated()].unique():
        out.append(_line(f"{path} nodule {dup}", "nodule_id_unique", "the id is used twice", "give every nodule its own id"))
    for r in nod.itertuples():
        where = f"{path} nodule {r.nodule_id} (case {r.case_id})"
        if r.label not in CLASSES:
            out.append(_line(where, "label_known", f"label={r.label!r}", f"use one of {list(CLASSES)}"))
        xyz = np.array([r.x_mm, r.y_mm, r.z_mm], float)
        if not np.isfinite(xyz).all():
            out.append(_line(where, "centre_finite", f"centre={xyz.tolist()}", "give the centre in mm (x, y, z)"))
            continue
        if r.case_id not in set(manifest.case_id):
            out.append(_line(where, "case_known", f"case_id={r.case_id!r} has no series",
                             "add the case's DICOM series or fix the case_id"))
            continue
        v = vols.get(r.case_id)
        if v is None:
            continue
        vox = v.voxel_of(xyz)
        if np.any(vox < -0.5) or np.any(vox > np.array(v.hu.shape) - 0.5):
            ext = [(round(o, 1), round(o + (n - 1) * s, 1)) for o, n, s in
                   zip(v.origin, v.hu.shape[::-1], v.spacing[::-1])]
            out.append(_line(where, "centre_inside_volume", f"centre {xyz.tolist()} mm is outside the scan "
                             f"(x, y, z extent {ext} mm)", "give the centre in patient coordinates (mm) of this series"))
    if "split" in nod.columns or set(manifest.columns) >= {"case_id", "split"}:
        split_of = dict(zip(manifest.case_id, manifest.split))
        sp = nod.case_id.map(split_of)
        for s in ("train", "val", "test"):
            have = set(nod.label[sp == s])
            for c in CLASSES:
                if c not in have:
                    out.append(_line(f"{path} split {s}", "class_in_every_split", f"no {c} nodule in the {s} split",
                                     "add cases with such nodules or re-split by patient so every split has both classes"))
    for ann_path in sorted(root.glob("*/annotation.json")):
        ann = json.loads(ann_path.read_text())
        for n in ann.get("nodules", []):
            if not n.get("contours") or not any(len(c.get("xy_mm", [])) for c in n["contours"]):
                out.append(_line(f"{ann_path} nodule {n.get('nodule_id')}", "nodule_has_contour",
                                 "the annotation names a nodule with no contour",
                                 "add the nodule's contours or remove it from the annotation file"))
    return out
