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


def series_folder(case_dir: Path) -> Path:
    """Where a case's slices are: ``<case>/series/`` if it exists, else the case folder itself."""
    return case_dir / "series" if (case_dir / "series").is_dir() else case_dir


def build_manifest(root: Path, split_fractions: dict | None = None, split_seed: int = 0) -> pd.DataFrame:
    """Your own data: one folder per case holding its DICOM series (directly or in ``series/``) and
    ``nodules.csv`` -> one manifest row per slice file. ``patient_id`` and ``split`` come from nodules.csv when
    it has them; otherwise each case is its own patient and the split is patient-level, stratified by whether
    the case holds a malignant nodule."""
    from medops.data.splits import apply_split

    root = Path(root)
    nod = pd.read_csv(root / "nodules.csv", dtype=str) if (root / "nodules.csv").exists() else pd.DataFrame()
    rows = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folder = series_folder(d)
        for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() not in (".json", ".csv", ".txt", ".md")):
            rows.append({"case_id": d.name, "modality": "ct", "path": f.relative_to(root).as_posix()})
    if not rows:
        raise DataError(str(root), "series_layout: no case folder with DICOM files",
                        "put one folder per case holding its DICOM series (or <case>/series/) and a nodules.csv")
    man = pd.DataFrame(rows)
    cases = pd.DataFrame({"case_id": sorted(man.case_id.unique())})
    by_case = nod.groupby("case_id") if "case_id" in nod else None
    first = lambda col, c, default: (by_case.get_group(c)[col].iloc[0] if by_case is not None and col in nod  # noqa: E731
                                     and c in by_case.groups else default)
    cases["patient_id"] = [first("patient_id", c, c) for c in cases.case_id]
    cases["label"] = [("malignant" if by_case is not None and c in by_case.groups and "label" in nod
                       and (by_case.get_group(c).label == "malignant").any() else "benign") for c in cases.case_id]
    if "split" in nod and nod.split.notna().all():
        cases["split"] = [first("split", c, "train") for c in cases.case_id]
    else:
        fr = split_fractions or {"train": 0.7, "val": 0.15, "test": 0.15}
        cases = pd.concat([apply_split(g, fr, split_seed) for _, g in cases.groupby("label", sort=True)],
                          ignore_index=True)
    return man.merge(cases[["case_id", "patient_id", "split"]], on="case_id")[
        ["case_id", "patient_id", "modality", "path", "split"]]


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
        if not v.contains(xyz):
            out.append(_line(where, "centre_inside_volume", f"centre {xyz.tolist()} mm is outside the scan "
                             f"(x, y, z extent {v.extent_mm()} mm)", "give the centre in patient coordinates (mm) of this series"))
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
