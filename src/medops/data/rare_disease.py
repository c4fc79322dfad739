"""Simulated rare-disease classification datasets (paper 002, section 3.1) and a source set.

Each target set is small and imbalanced (the disease is the minority class) and keeps a lesion
mask per positive case, used only to score explanations (Grad-CAM), never for training.
Appearance follows published imaging facts, not any target metric:

* ``gaucher-ct`` — axial abdominal CT in Hounsfield units (DESIGN.md: air -1000, fat ~-100,
  soft tissue 20-60, liver 55-65, spleen 40-50, bone > 300), written as DICOM with a rescale
  intercept like a scanner does. Gaucher disease type 1: splenomegaly (spleen volume often
  5-15x normal, i.e. a slice area about 3-6x), hepatomegaly (1.2-2.5x) and marrow infiltration
  (lower, patchy attenuation of the vertebral body); a quarter of the patients are
  splenectomised (no spleen: liver and bone signs only). What makes it hard on real data is
  modelled too: the slice level changes the visible organ areas of everyone, and some controls
  have a mildly enlarged spleen from other causes (e.g. portal hypertension).
* ``ocular-fundus`` — colour fundus photographs (8-bit RGB): orange-red fundus with vignetting
  inside a circular field of view, optic disc, vessel arcades, macula. Choroidal melanoma:
  a pigmented lesion of 1.5-4 disc diameters, often with orange pigment (lipofuscin) and a
  subretinal-fluid halo; benign choroidal nevi (in part of the controls) are flat and grey,
  mostly < 1.5 disc diameters but some large (the "indeterminate" lesions that overlap).
* ``nf-mri`` — axial brain MRI with T1, T2 and FLAIR channels (16-bit): tissue contrasts of
  WM / GM / CSF / fat per sequence, a smooth bias field and Rician noise. Neurofibromatosis
  nerve-sheath tumours (schwannoma / neurofibroma): T1 iso-hypointense, T2 and FLAIR
  hyperintense, at the skull base / cerebellopontine angle or along the optic pathway;
  some controls carry small FLAIR-bright incidental foci.
* ``rare-source`` — a larger, balanced set from the same three modalities with *common*
  findings (focal liver lesions on CT, diabetic-retinopathy haemorrhages and exudates on
  fundus, infarcts on MRI): six classes (modality x normal/abnormal). It is the source domain
  for offline transfer learning (RadImageNet-style pretraining) and never contains the
  target diseases.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from medops.data.io import write_png
from medops.data.splits import apply_split, with_extra_test

TARGETS = {
    "gaucher-ct": {"classes": ["normal", "gaucher"], "modality": "ct", "channels": ["image"]},
    "ocular-fundus": {"classes": ["benign", "melanoma"], "modality": "fundus", "channels": ["image"]},
    "nf-mri": {"classes": ["normal", "nf_tumour"], "modality": "mri", "channels": ["t1", "t2", "flair"]},
}
SOURCE = {"rare-source": {"classes": ["ct_normal", "ct_liver_lesion", "fundus_normal", "fundus_retinopathy",
                                      "mri_normal", "mri_infarct"], "modality": "mixed"}}
DATASETS = {**TARGETS, **SOURCE}
MRI_MAX = 4000


def _yy_xx(n):
    return np.mgrid[0:n, 0:n].astype(np.float32)


def _ellipse(n, cy, cx, ry, rx, angle=0.0, wobble=None):
    yy, xx = _yy_xx(n)
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
    r = np.sqrt(u * u + v * v)
    if wobble is not None:  # irregular outline: radius modulated by a few harmonics
        th = np.arctan2(v, u)
        r = r / (1 + sum(a * np.cos(k * th + p) for k, a, p in wobble))
    return r <= 1.0


def _smooth_noise(n, rng, sigma):
    return cv2.GaussianBlur(rng.standard_normal((n, n)).astype(np.float32), (0, 0), sigma)


def _wobble(rng, amp=0.12):
    return [(k, rng.uniform(0, amp), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]


# ---------------------------------------------------------------- CT (Hounsfield units)
def ct_slice(n: int, rng, *, spleen_scale=1.0, liver_scale=1.0, marrow=False, liver_lesions=0, abnormal=None):
    """Axial abdominal CT slice in HU and the abnormal-region mask (``spleen_scale`` 0: no spleen).

    ``abnormal``: whether enlarged organs belong to the mask (default: when enlarged)."""
    hu = np.full((n, n), -1000.0, np.float32)
    cy, cx = n * rng.uniform(0.48, 0.52), n * rng.uniform(0.48, 0.52)
    ry, rx = n * rng.uniform(0.30, 0.34), n * rng.uniform(0.40, 0.44)
    body = _ellipse(n, cy, cx, ry, rx)
    hu[body] = -100 + 15 * _smooth_noise(n, rng, 3)[body]                      # subcutaneous fat
    wall = _ellipse(n, cy, cx, ry * 0.88, rx * 0.9)
    hu[wall] = 45.0                                                           # muscle wall
    cavity = _ellipse(n, cy, cx, ry * 0.8, rx * 0.83)
    hu[cavity] = -90 + 10 * _smooth_noise(n, rng, 2)[cavity]                  # visceral fat
    mask = np.zeros((n, n), bool)
    # bowel loops: fluid and gas
    for _ in range(rng.integers(4, 8)):
        by, bx = cy + ry * rng.uniform(-0.6, 0.1), cx + rx * rng.uniform(-0.3, 0.5)
        loop = _ellipse(n, by, bx, n * rng.uniform(0.03, 0.06), n * rng.uniform(0.03, 0.07), rng.uniform(0, np.pi)) & cavity
        hu[loop] = rng.uniform(0, 30)
        gas = _ellipse(n, by, bx, n * 0.015, n * 0.02) & loop
        hu[gas] = -1000 if rng.random() < 0.5 else hu[gas]
    # liver: image left (patient right), anterior-lateral
    ls = np.sqrt(liver_scale)
    liver = _ellipse(n, cy - ry * 0.15, cx - rx * 0.42, ry * 0.45 * ls, rx * 0.33 * ls, rng.uniform(-0.3, 0.1),
                     _wobble(rng, 0.06)) & cavity
    hu[liver] = rng.uniform(55, 65)
    for _ in range(liver_lesions):  # common finding (source set): hypodense focal lesion
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6)
        les = _ellipse(n, cy - ry * 0.15 + np.sin(ang) * rad * ry * 0.35, cx - rx * 0.42 + np.cos(ang) * rad * rx * 0.25,
                       n * rng.uniform(0.02, 0.05), n * rng.uniform(0.02, 0.05)) & liver
        hu[les] = rng.uniform(10, 30)
        mask |= les
    # spleen: image right, posterior; area grows with spleen_scale
    ss = np.sqrt(spleen_scale)
    spleen = _ellipse(n, cy + ry * 0.05, cx + rx * 0.55, ry * 0.3 * ss, rx * 0.14 * ss, rng.uniform(0.2, 0.6),
                      _wobble(rng, 0.08)) & cavity if spleen_scale > 0 else np.zeros((n, n), bool)
    hu[spleen] = rng.uniform(40, 50)
    # kidneys, aorta, vertebra (posterior midline)
    for side in (-1, 1):
        k = _ellipse(n, cy + ry * 0.42, cx + side * rx * 0.3, ry * 0.16, rx * 0.08, side * 0.4) & cavity
        hu[k] = 30.0
    hu[_ellipse(n, cy + ry * 0.38, cx + rx * 0.05, n * 0.022, n * 0.022)] = 40.0
    vy, vx, vr = cy + ry * 0.62, cx, n * 0.055
    hu[_ellipse(n, vy, vx, vr, vr * 1.1)] = 700.0                               # cortical bone
    cancellous = _ellipse(n, vy, vx, vr * 0.8, vr * 0.88)
    hu[cancellous] = rng.uniform(200, 280)
    if marrow:  # Gaucher marrow infiltration: patchy lower attenuation of the vertebral body
        patch = cancellous & (_smooth_noise(n, rng, 2.5) > rng.uniform(-0.1, 0.2))
        hu[patch] = rng.uniform(60, 120)
        mask |= patch
    big_spleen = spleen_scale > 1.6 if abnormal is None else (abnormal and spleen_scale > 1.3)
    big_liver = liver_scale > 1.25 if abnormal is None else (abnormal and liver_scale > 1.15)
    if big_spleen:
        mask |= spleen
    if big_liver:
        mask |= liver
    hu = cv2.GaussianBlur(hu, (0, 0), 0.7)                                      # scanner PSF
    hu += rng.normal(0, 12, hu.shape).astype(np.float32)                         # quantum noise, ~12 HU
    return np.clip(hu, -1024, 3071), mask


def write_ct_dicom(path: Path, hu: np.ndarray, case_id: str, pixel_mm: float) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyDescription = "CT", case_id, "simulated abdomen (medops)"
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [pixel_mm, pixel_mm]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.round(hu + 1024).astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


# ---------------------------------------------------------------- fundus (RGB)
def fundus_image(n: int, rng, *, lesion: str = "none"):
    """Colour fundus photograph (uint8 RGB) and the lesion mask. lesion: none|nevus|melanoma|retinopathy."""
    yy, xx = _yy_xx(n)
    c = n / 2
    r = np.sqrt((yy - c) ** 2 + (xx - c) ** 2) / (0.46 * n)
    fov = r <= 1
    base = np.array([rng.uniform(190, 225), rng.uniform(80, 115), rng.uniform(35, 60)], np.float32)
    vign = np.clip(1 - 0.45 * r ** 2, 0.3, 1)
    tex = 1 + 0.06 * _smooth_noise(n, rng, 6) / 0.05
    img = base[None, None] * (vign * np.clip(tex, 0.8, 1.2))[..., None]
    side = rng.choice([-1, 1])
    dy, dx = c + rng.normal(0, 0.03 * n), c + side * 0.22 * n
    dd = 0.075 * n                                                                # disc diameter (px)
    # vessel arcades from the disc
    vessels = np.zeros((n, n), np.float32)
    for k in range(rng.integers(6, 9)):
        ang = rng.uniform(0, 2 * np.pi)
        pts, y, x, w = [], dy, dx, 4.0
        for _ in range(40):
            ang += rng.normal(0, 0.12)
            y, x = y + np.sin(ang) * n * 0.015, x + np.cos(ang) * n * 0.015 - side * n * 0.004
            pts.append((int(x), int(y)))
        cv2.polylines(vessels, [np.array(pts, np.int32)], False, 1.0, thickness=max(1, int(w * n / 256)))
    vessels = cv2.GaussianBlur(vessels, (0, 0), 0.8)
    img = img * (1 - 0.45 * vessels[..., None]) + np.array([140, 30, 25], np.float32) * 0.0
    # macula: darker, temporal to the disc
    mac = np.exp(-(((yy - dy) ** 2 + (xx - (c - side * 0.1 * n)) ** 2) / (2 * (0.06 * n) ** 2)))
    img *= (1 - 0.25 * mac)[..., None]
    disc = np.exp(-(((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * (dd / 2.3) ** 2)))
    img = img * (1 - disc[..., None]) + np.array([250, 215, 150], np.float32) * disc[..., None]
    mask = np.zeros((n, n), bool)
    def place(diam):
        for _ in range(50):
            ly, lx = c + rng.uniform(-0.3, 0.3) * n, c + rng.uniform(-0.3, 0.3) * n
            if np.hypot(ly - dy, lx - dx) > dd * 0.8 + diam / 2 and np.hypot(ly - c, lx - c) + diam / 2 < 0.44 * n:
                return ly, lx
        return c, c - side * 0.15 * n
    if lesion in ("nevus", "melanoma"):
        if lesion == "nevus":  # mostly small; about 1 in 8 large enough to be indeterminate
            diam = dd * (rng.uniform(1.5, 2.5) if rng.random() < 0.12 else rng.uniform(0.5, 1.5))
        else:
            diam = dd * rng.uniform(1.5, 4.0)
        ly, lx = place(diam)
        les = _ellipse(n, ly, lx, diam / 2 * rng.uniform(0.75, 1), diam / 2, rng.uniform(0, np.pi),
                       _wobble(rng, 0.05 if lesion == "nevus" else 0.15))
        soft = cv2.GaussianBlur(les.astype(np.float32), (0, 0), 1.5 if lesion == "nevus" else 2.5)
        colour = np.array([105, 95, 80] if lesion == "nevus" else [90, 75, 60], np.float32) * rng.uniform(0.85, 1.15)
        alpha = 0.55 if lesion == "nevus" else 0.85
        img = img * (1 - alpha * soft[..., None]) + alpha * soft[..., None] * colour
        if lesion == "melanoma" and rng.random() < 0.6:
            orange = les & (_smooth_noise(n, rng, 1.2) > 0.25)                      # lipofuscin
            img[orange] = img[orange] * 0.4 + np.array([230, 140, 40], np.float32) * 0.6
        if lesion == "melanoma" and rng.random() < 0.5:
            halo = _ellipse(n, ly, lx, diam * 0.75, diam * 0.8) & ~les                 # subretinal fluid
            img[halo] *= np.array([1.05, 1.1, 1.15], np.float32)
        mask = les
    elif lesion == "retinopathy":  # common finding (source set): dot/blot haemorrhages, hard exudates
        for _ in range(rng.integers(8, 25)):
            hy, hx = c + rng.uniform(-0.35, 0.35) * n, c + rng.uniform(-0.35, 0.35) * n
            rad = max(1, int(rng.uniform(0.005, 0.015) * n))
            red = rng.random() < 0.6
            cv2.circle(img, (int(hx), int(hy)), rad, (120, 20, 15) if red else (240, 220, 120), -1)
            cv2.circle(mask.view(np.uint8), (int(hx), int(hy)), rad, 1, -1)
    img = cv2.GaussianBlur(img, (0, 0), 0.6) + rng.normal(0, 3, img.shape).astype(np.float32)
    img[~fov] = 0
    return np.clip(img, 0, 255).astype(np.uint8), mask & fov


# ---------------------------------------------------------------- brain MRI (T1, T2, FLAIR)
# relative signal per tissue and sequence (T1-w: WM > GM > CSF; T2-w: CSF > GM > WM; FLAIR: CSF nulled)
TISSUE = {"bg": (0, 0, 0), "fat": (1.2, 0.9, 1.0), "skull": (0.08, 0.08, 0.08), "csf": (0.25, 1.5, 0.12),
          "gm": (0.75, 0.8, 0.9), "wm": (1.0, 0.55, 0.7), "tumour": (0.7, 1.3, 1.25), "infarct": (0.55, 1.25, 1.3),
          "focus": (0.95, 0.9, 1.2)}


def brain_mri(n: int, rng, *, lesion: str = "none"):
    """Axial brain MRI, channels T1/T2/FLAIR (uint16), and the lesion mask. lesion: none|tumour|infarct."""
    lab = np.zeros((n, n), np.uint8)
    names = list(TISSUE)
    cy, cx = n * rng.uniform(0.48, 0.52), n * 0.5
    ry, rx = n * rng.uniform(0.40, 0.43), n * rng.uniform(0.33, 0.36)
    lab[_ellipse(n, cy, cx, ry, rx)] = names.index("fat")
    lab[_ellipse(n, cy, cx, ry * 0.95, rx * 0.94)] = names.index("skull")
    brain = _ellipse(n, cy, cx, ry * 0.88, rx * 0.86, 0, _wobble(rng, 0.02))
    lab[brain] = names.index("csf")
    lab[_ellipse(n, cy, cx, ry * 0.85, rx * 0.83)] = names.index("gm")
    wm = _ellipse(n, cy, cx, ry * 0.72, rx * 0.68, 0, _wobble(rng, 0.05)) & (_smooth_noise(n, rng, 3) > -0.12)
    lab[wm] = names.index("wm")
    sulci = brain & ~_ellipse(n, cy, cx, ry * 0.7, rx * 0.66) & (np.abs(_smooth_noise(n, rng, 1.5)) < 0.03)
    lab[sulci] = names.index("csf")
    vs = rng.uniform(0.8, 1.3)                                                   # ventricle size varies
    for side in (-1, 1):
        lab[_ellipse(n, cy - ry * 0.05, cx + side * rx * 0.12, ry * 0.2 * vs, rx * 0.06 * vs, side * 0.25)] = names.index("csf")
    mask = np.zeros((n, n), bool)
    if lesion == "tumour":  # skull base / CPA or optic pathway; round, well-defined
        site = rng.choice(["cpa", "optic", "peripheral"])
        if site == "cpa":
            ty, tx = cy + ry * rng.uniform(0.45, 0.6), cx + rng.choice([-1, 1]) * rx * rng.uniform(0.4, 0.55)
        elif site == "optic":
            ty, tx = cy - ry * rng.uniform(0.5, 0.65), cx + rng.uniform(-0.1, 0.1) * rx
        else:
            a = rng.uniform(0, 2 * np.pi)
            ty, tx = cy + np.sin(a) * ry * 0.72, cx + np.cos(a) * rx * 0.72
        tr = n * rng.uniform(0.015, 0.06)                                        # 4-15 mm at 256 px
        mask = _ellipse(n, ty, tx, tr * rng.uniform(0.7, 1), tr, rng.uniform(0, np.pi), _wobble(rng, 0.08)) & brain
        lab[mask] = names.index("tumour")
    elif lesion == "infarct":  # common finding (source set): cortical wedge
        a = rng.uniform(0, 2 * np.pi)
        yy, xx = _yy_xx(n)
        ang = np.arctan2(yy - cy, xx - cx)
        d = np.abs(np.angle(np.exp(1j * (ang - a))))
        rr = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        mask = (d < rng.uniform(0.2, 0.4)) & (rr > 0.45) & (rr < 0.85)
        lab[mask] = names.index("infarct")
    if lesion != "tumour" and rng.random() < 0.3:  # incidental FLAIR-bright foci (distractors)
        for _ in range(rng.integers(1, 4)):
            lab[_ellipse(n, cy + rng.uniform(-0.4, 0.4) * ry, cx + rng.uniform(-0.4, 0.4) * rx, n * 0.008, n * 0.008) & wm] = names.index("focus")
    bias = np.exp(0.15 * _smooth_noise(n, rng, n / 6) / max(_smooth_noise(n, rng, n / 6).std(), 1e-6))
    chans = []
    for s in range(3):
        level = np.array([TISSUE[k][s] for k in names], np.float32)[lab]
        level = cv2.GaussianBlur(level, (0, 0), 0.8) * bias * (MRI_MAX * 0.55)
        sigma = 0.03 * MRI_MAX
        real = level + rng.normal(0, sigma, level.shape)
        imag = rng.normal(0, sigma, level.shape)
        chans.append(np.clip(np.sqrt(real ** 2 + imag ** 2), 0, 65535).astype(np.uint16))  # Rician magnitude
    return chans, mask


# ---------------------------------------------------------------- dataset writer
def _case(args):
    dataset, i, label, patient, seed, size, out = args
    rng = np.random.default_rng([seed, i])
    out = Path(out)
    cid = f"{dataset.split('-')[0]}{i:05d}"
    rows, mask, extra = [], None, {}
    kind = dataset.split("-")[0] if dataset != "rare-source" else label.split("_")[0]
    if kind in ("gaucher", "ct"):
        if dataset == "gaucher-ct":
            sick = label == "gaucher"
            level = float(rng.lognormal(0, 0.3))          # slice level: visible organ area varies for everyone
            if sick:
                spleen = 0.0 if rng.random() < 0.25 else float(rng.lognormal(np.log(3.0), 0.45))  # splenectomy
                liver = float(rng.lognormal(np.log(1.4), 0.15))
            else:
                other = rng.random() < 0.1                  # mild splenomegaly from other causes
                spleen = float(rng.lognormal(np.log(1.8), 0.2)) if other else float(rng.lognormal(0, 0.25))
                liver = float(rng.lognormal(0, 0.1))
            hu, mask = ct_slice(size, rng, spleen_scale=spleen * level, liver_scale=liver * level ** 0.5,
                                marrow=sick and rng.random() < 0.6, abnormal=sick)
            extra = {"spleen_scale": spleen, "liver_scale": liver, "slice_level": level}
        else:
            hu, mask = ct_slice(size, rng, liver_lesions=int(rng.integers(1, 4)) if label.endswith("lesion") else 0)
        write_ct_dicom(out / "images" / f"{cid}.dcm", hu, cid, 384.0 / size)
        rows.append(("image", f"images/{cid}.dcm"))
    elif kind in ("ocular", "fundus"):
        if dataset == "ocular-fundus":
            lesion = "melanoma" if label == "melanoma" else ("nevus" if rng.random() < 0.4 else "none")
        else:
            lesion = "retinopathy" if label.endswith("retinopathy") else "none"
        rgb, mask = fundus_image(size, rng, lesion=lesion)
        write_png(out / "images" / f"{cid}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        rows.append(("image", f"images/{cid}.png"))
        extra = {"lesion": lesion}
    else:
        lesion = "tumour" if label == "nf_tumour" else ("infarct" if label == "mri_infarct" else "none")
        chans, mask = brain_mri(size, rng, lesion=lesion)
        for name, ch in zip(("t1", "t2", "flair"), chans):
            write_png(out / "images" / f"{cid}_{name}.png", ch)
            rows.append((name, f"images/{cid}_{name}.png"))
    if mask is not None and mask.any():
        write_png(out / "masks" / f"{cid}.png", mask.astype(np.uint8) * 255)
        rows.append(("mask", f"masks/{cid}.png"))
    return [{"case_id": cid, "patient_id": f"p{patient:05d}", "modality": m, "path": p, "label": label, **extra}
            for m, p in rows]


def generate(dataset: str, n_cases: int, prevalence: float, size: int, seed: int, split, out: Path,
             workers: int = 1, progress: bool = True, test_cases: int = 0) -> pd.DataFrame:
    """Write images, masks, ``manifest.parquet`` (with ``label``) and ``dataset.json`` under ``out``;
    ``test_cases`` more cases (new patients, same prevalence) go to the test split only."""
    spec = DATASETS[dataset]
    rng = np.random.default_rng(seed)
    classes = spec["classes"]
    if dataset in TARGETS:
        n_pos = max(2, int(round(prevalence * n_cases)))
        labels = [classes[1]] * n_pos + [classes[0]] * (n_cases - n_pos)
    else:
        labels = [classes[i % len(classes)] for i in range(n_cases)]
    labels = list(rng.permutation(labels))
    if test_cases:
        xrng = np.random.default_rng([seed, 2])
        n_xpos = int(round(prevalence * test_cases)) if dataset in TARGETS else 0
        xlabels = ([classes[1]] * n_xpos + [classes[0]] * (test_cases - n_xpos) if dataset in TARGETS
                   else [classes[i % len(classes)] for i in range(test_cases)])
        labels += list(xrng.permutation(xlabels))
    jobs = [(dataset, i, lab, i, seed, size, str(out)) for i, lab in enumerate(labels)]
    per_case = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            for r in tqdm(ex.map(_case, jobs, chunksize=4), total=len(jobs), desc=f"generate {dataset}", disable=not progress):
                per_case.append(r)
    else:
        for j in tqdm(jobs, desc=f"generate {dataset}", disable=not progress):
            per_case.append(_case(j))
    frame = lambda cases: pd.DataFrame([row for c in cases for row in c])  # noqa: E731
    man = with_extra_test(frame(per_case[:n_cases]), frame(per_case[n_cases:]), split.fractions, split.seed,
                          split=lambda m: _stratified_split(m, split, seed))
    man = man.sort_values(["case_id", "modality"]).reset_index(drop=True)
    man.to_parquet(out / "manifest.parquet", index=False)
    (out / "dataset.json").write_text(json.dumps({
        "dataset": dataset, "classes": classes, "modality": spec["modality"],
        "positive_class": classes[1] if dataset in TARGETS else None, "size": size, "seed": seed,
        "n_cases": n_cases, "prevalence": prevalence, "extra_test_cases": test_cases}, indent=2))
    return man


def _stratified_split(man: pd.DataFrame, split, seed: int) -> pd.DataFrame:
    """Patient-level split per class, so the minority class is present in every split."""
    parts = []
    for _, g in man.groupby("label", sort=True):
        parts.append(apply_split(g, split.fractions, split.seed + seed % 1000))
    return pd.concat(parts, ignore_index=True).sort_values(["case_id", "modality"]).reset_index(drop=True)


def contact_sheet(root: Path, out_png: Path, n_per_class: int = 4) -> None:
    """A figure per dataset: ``n_per_class`` cases of each class, lesion outline in yellow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medops.data.readers import case_stack

    root = Path(root)
    man = pd.read_parquet(root / "manifest.parquet")
    info = json.loads((root / "dataset.json").read_text())
    classes = info["classes"]
    fig, axes = plt.subplots(len(classes), n_per_class, figsize=(2.2 * n_per_class, 2.3 * len(classes)), squeeze=False)
    for r, cls in enumerate(classes):
        ids = sorted(man[man.label == cls].case_id.unique())[:n_per_class]
        for c in range(n_per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(ids):
                continue
            g = man[man.case_id == ids[c]]
            stack, mask = case_stack(root, g)
            show = stack[0] if stack.shape[0] == 1 else (stack.transpose(1, 2, 0) if g.modality.iloc[0] == "image"
                                                            else stack[1])
            lo, hi = np.percentile(show, [1, 99.5])
            ax.imshow(np.clip((show - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray")
            if mask is not None and mask.any():
                ax.contour(mask, levels=[0.5], colors="yellow", linewidths=0.6)
            ax.set_title(f"{ids[c]} {cls}", fontsize=7)
    fig.suptitle(f"{info['dataset']} ({len(man.case_id.unique())} cases)", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
