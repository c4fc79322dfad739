"""Simulated tri-modal breast tumour dataset (paper 000, Table 1).

One tumour per case, seen by ultrasound (US), mammography (MG) and MRI, with
its binary mask in the US (reference) frame. Appearance follows published
imaging physics, not any target metric:

* US B-mode: amplitude = sqrt(backscatter) x Rayleigh speckle (fully developed
  speckle, point SNR mean/std ~1.91 before log compression; Burckhardt 1978,
  Wagner 1983), log-compressed over ``US_DYNAMIC_RANGE_DB``; hypoechoic
  tumour with low contrast and posterior acoustic shadowing. 8-bit PNG.
* MG: anatomical background with a power-law spectrum P(f) ~ f^-beta, beta ~3
  (Burgess et al. 2001); the mass is about as dense as fibroglandular tissue,
  so dense breasts hide it; quantum noise. 12-bit counts in a 16-bit PNG.
* MRI (contrast-enhanced T1-like): strong lesion enhancement, background
  parenchymal enhancement blobs (false positives), a smooth multiplicative bias
  field (what N4 corrects), Rician noise, and a small rigid misregistration
  relative to US whose true parameters are kept for checking registration.
  16-bit PNG.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from medops.config import SplitConfig
from medops.data.io import write_png
from medops.data.splits import with_extra_test

MODALITIES = ("us", "mg", "mri")  # the image modalities of every case (plus its mask)




US_DYNAMIC_RANGE_DB = 50.0
MG_MAX_COUNT = 4095  # 12-bit detector
MRI_MAX = 4000
SHAPES = ("oval", "lobulated", "spiculated")
MODALITY_FILES = ("us", "mg", "mri", "mask")


@dataclass(frozen=True)
class CaseTruth:
    case_id: str
    patient_id: str
    shape: str
    diameter_mm: float
    density: float            # breast density (fraction of fibroglandular signal)
    shadow_strength: float
    mri_rotation_deg: float   # MRI->US rigid transform about the image centre
    mri_tx_px: float
    mri_ty_px: float


# ---------------------------------------------------------------- textures
def power_law_noise(n: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std field whose power spectrum falls as f^-beta."""
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    field = np.fft.irfft2(spec, s=(n, n))
    return (field - field.mean()) / (field.std() + 1e-12)


def radial_power_slope(img: np.ndarray, fmin: float = 0.02, fmax: float = 0.25) -> float:
    """Estimate beta of P(f) ~ f^-beta from a square image (Hann-windowed)."""
    n = img.shape[0]
    win = np.outer(np.hanning(n), np.hanning(n))
    x = (img - img.mean()) * win
    p = np.abs(np.fft.fftshift(np.fft.fft2(x))) ** 2
    yy, xx = np.indices(p.shape) - n // 2
    r = np.sqrt(xx**2 + yy**2) / n
    bins = np.logspace(np.log10(fmin), np.log10(fmax), 20)
    idx = np.digitize(r.ravel(), bins)
    fs, ps = [], []
    for i in range(1, len(bins)):
        sel = idx == i
        if sel.any():
            fs.append(r.ravel()[sel].mean())
            ps.append(p.ravel()[sel].mean())
    slope = np.polyfit(np.log(fs), np.log(ps), 1)[0]
    return float(-slope)


def rayleigh_speckle(shape, rng: np.random.Generator, axial_sigma=0.8, lateral_sigma=1.4) -> np.ndarray:
    """Envelope of band-limited circular complex Gaussian scattering (Rayleigh).

    Normalised to unit RMS so that ``sqrt(backscatter) * speckle`` has the
    backscatter as mean intensity.
    """
    re = rng.standard_normal(shape).astype(np.float32)
    im = rng.standard_normal(shape).astype(np.float32)
    k = (0, 0)
    re = cv2.GaussianBlur(re, k, sigmaX=lateral_sigma, sigmaY=axial_sigma)
    im = cv2.GaussianBlur(im, k, sigmaX=lateral_sigma, sigmaY=axial_sigma)
    env = np.sqrt(re**2 + im**2)
    return env / np.sqrt(np.mean(env**2))


# ---------------------------------------------------------------- tumour shape
def tumour_radius_fn(shape: str, r0: float, rng: np.random.Generator):
    """Return r(theta) for an oval, lobulated or spiculated (irregular) tumour."""
    if shape == "oval":
        aspect = rng.uniform(0.6, 0.95)
        phi = rng.uniform(0, np.pi)

        def r(t):
            a, b = r0, r0 * aspect
            return a * b / np.sqrt((b * np.cos(t - phi)) ** 2 + (a * np.sin(t - phi)) ** 2)
        return r
    if shape == "lobulated":
        ks = np.arange(2, 6)
        amps = rng.uniform(0.05, 0.14, len(ks))
        phases = rng.uniform(0, 2 * np.pi, len(ks))

        def r(t):
            t = np.asarray(t)[..., None]
            return r0 * (1 + np.sum(amps * np.cos(ks * t + phases), axis=-1))
        return r
    # spiculated / irregular: irregular core plus narrow radial spikes
    ks = np.arange(2, 9)
    amps = rng.uniform(0.03, 0.09, len(ks))
    phases = rng.uniform(0, 2 * np.pi, len(ks))
    n_spk = int(rng.integers(6, 14))
    spk_t = rng.uniform(0, 2 * np.pi, n_spk)
    spk_len = rng.uniform(0.25, 0.6, n_spk)
    spk_w = rng.uniform(0.04, 0.09, n_spk)

    def r(t):
        t = np.asarray(t)
        base = 1 + np.sum(amps * np.cos(ks * t[..., None] + phases), axis=-1)
        d = np.angle(np.exp(1j * (t[..., None] - spk_t)))
        spikes = np.sum(spk_len * np.exp(-0.5 * (d / spk_w) ** 2), axis=-1)
        return r0 * (base + spikes)
    return r


def render_mask(n: int, centre, radius_fn, scale: float = 1.0, supersample: int = 2) -> np.ndarray:
    """Binary mask on an n x n grid; centre/radius are in units of the base grid."""
    m = n * supersample
    yy, xx = np.mgrid[0:m, 0:m].astype(np.float32)
    s = scale * supersample
    dy = (yy + 0.5) / s - 0.5 - centre[0]
    dx = (xx + 0.5) / s - 0.5 - centre[1]
    rad = np.sqrt(dx**2 + dy**2)
    theta = np.arctan2(dy, dx)
    inside = (rad <= radius_fn(theta)).astype(np.float32)
    if supersample > 1:
        inside = cv2.resize(inside, (n, n), interpolation=cv2.INTER_AREA)
    return inside


def mri_to_us_matrix(rot_deg: float, tx: float, ty: float, n: int) -> np.ndarray:
    """2x3 affine mapping MRI pixel (x, y) to US pixel: rotate about the centre, then shift."""
    c = (n - 1) / 2.0
    th = np.deg2rad(rot_deg)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    t = np.array([c, c]) - R @ np.array([c, c]) + np.array([tx, ty])
    return np.hstack([R, t[:, None]])


# ---------------------------------------------------------------- one case
def simulate_case(index: int, cfg, patient_index: int, visit: int):
    """Simulate one case; deterministic in (cfg.seed, index)."""
    rng = np.random.default_rng([cfg.seed, index])
    prng = np.random.default_rng([cfg.seed, 10_000_000 + patient_index])  # same breast per patient
    n, nm = cfg.us_size, cfg.mg_size
    scale_mg = nm / n

    # anatomy shared by all modalities (US frame): fibroglandular texture
    texture_hi = power_law_noise(nm, 3.0, prng)                  # MG resolution
    texture = cv2.resize(texture_hi.astype(np.float32), (n, n), interpolation=cv2.INTER_AREA)
    density = float(prng.uniform(0.2, 0.85))
    gland = 1.0 / (1.0 + np.exp(-(texture * 1.8 + (density - 0.5) * 3.0)))  # fraction glandular

    shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
    diam_mm = float(rng.uniform(*cfg.tumour_diameter_mm))
    r0 = diam_mm / cfg.pixel_mm / 2.0
    margin = r0 * 1.4 + 8
    centre = (float(rng.uniform(margin, n * 0.62)), float(rng.uniform(margin, n - margin)))  # (row, col)
    rfn = tumour_radius_fn(shape, r0, rng)
    mask_soft = render_mask(n, centre, rfn)
    mask = (mask_soft >= 0.5).astype(np.uint8)
    if mask.sum() == 0:  # extremely small shapes: keep at least the centre pixel
        mask[int(centre[0]), int(centre[1])] = 1

    # ---- ultrasound
    echo = 0.3 + 0.7 * gland                                   # fat grey, gland bright
    lesion_echo = float(rng.uniform(0.12, 0.35))
    heter = 1 + 0.25 * cv2.GaussianBlur(rng.standard_normal((n, n)).astype(np.float32), (0, 0), 3)
    soft = cv2.GaussianBlur(mask_soft, (0, 0), 1.2)
    echo = echo * (1 - soft) + lesion_echo * np.clip(heter, 0.3, 2) * soft
    shadow_strength = float(rng.uniform(0.0, 1.6))
    below = np.cumsum(mask_soft, axis=0) - mask_soft              # tumour thickness above each pixel
    shadow = np.exp(-shadow_strength * below / max(r0, 1.0))
    shadow = cv2.GaussianBlur(shadow.astype(np.float32), (0, 0), sigmaX=2.5, sigmaY=0.5)
    depth = np.linspace(0, 1, n)[:, None]
    tgc_error = 1.0 - 0.25 * depth * float(rng.uniform(0, 1))     # imperfect time-gain compensation
    backscatter = echo * shadow * tgc_error
    amp = np.sqrt(backscatter) * rayleigh_speckle((n, n), rng)
    db = 20 * np.log10(np.maximum(amp, 1e-6) / 2.0)               # reference ~ bright gland + speckle peak
    us = np.clip((db + US_DYNAMIC_RANGE_DB) / US_DYNAMIC_RANGE_DB, 0, 1)
    us8 = np.round(us * 255).astype(np.uint8)

    # ---- mammography (same field of view, 2x resolution)
    mask_mg = render_mask(nm, centre, rfn, scale=scale_mg, supersample=1)
    mass = cv2.GaussianBlur(mask_mg, (0, 0), 1.5 * scale_mg)
    mass_density = float(rng.uniform(0.55, 0.9))
    dense = texture_hi * (0.18 + 0.22 * density)                 # anatomical noise, beta = 3
    atten = 0.35 + dense + 0.25 * density + mass_density * 0.45 * mass
    counts = atten * 2600 + 400
    counts = counts + rng.standard_normal(counts.shape) * np.sqrt(np.maximum(counts, 1)) * 1.2
    mg16 = np.clip(np.round(counts), 0, MG_MAX_COUNT).astype(np.uint16)

    # ---- MRI, rendered in its own (misregistered) frame
    rot = float(rng.uniform(-cfg.mri_max_rotation_deg, cfg.mri_max_rotation_deg))
    tx, ty = (float(v) for v in rng.uniform(-cfg.mri_max_shift_px, cfg.mri_max_shift_px, 2))
    A = mri_to_us_matrix(rot, tx, ty, n)
    signal = 0.12 + 0.35 * gland                                  # fat-suppressed T1 + contrast
    n_bpe = int(rng.integers(0, 4))                               # background parenchymal enhancement
    for _ in range(n_bpe):
        c = rng.uniform(0.1 * n, 0.9 * n, 2)
        s = rng.uniform(4, 12)
        yy, xx = np.mgrid[0:n, 0:n]
        blob = np.exp(-(((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * s**2)))
        signal = signal + float(rng.uniform(0.25, 0.55)) * blob * gland
    enh = float(rng.uniform(0.35, 0.9))                          # weakly to strongly enhancing
    rim = (mask_soft - cv2.erode(mask_soft, np.ones((5, 5), np.uint8))) if r0 > 20 else 0
    lesion = soft * (enh - 0.15 * (r0 > 20) * (1 - rim))          # big lesions: rim > core
    signal = signal * (1 - soft) + lesion + 0.0
    signal = cv2.GaussianBlur(signal.astype(np.float32), (0, 0), 1.5)   # partial volume
    mri_frame = cv2.warpAffine(signal, A, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
    yy, xx = (np.mgrid[0:n, 0:n] / n - 0.5)
    bc = rng.uniform(-0.3, 0.3, 5)
    bias = np.exp(bc[0] * xx + bc[1] * yy + bc[2] * xx * yy + bc[3] * xx**2 + bc[4] * yy**2)
    sigma = float(rng.uniform(0.03, 0.07))
    clean = mri_frame * bias
    mri = np.sqrt((clean + sigma * rng.standard_normal((n, n))) ** 2 + (sigma * rng.standard_normal((n, n))) ** 2)
    mri16 = np.clip(np.round(mri * MRI_MAX / 1.6), 0, 65535).astype(np.uint16)

    truth = CaseTruth(
        case_id=f"case_{index:05d}", patient_id=f"pat_{patient_index:05d}", shape=shape,
        diameter_mm=diam_mm, density=density, shadow_strength=shadow_strength,
        mri_rotation_deg=rot, mri_tx_px=tx, mri_ty_px=ty,
    )
    return truth, {"us": us8, "mg": mg16, "mri": mri16, "mask": (mask * 255).astype(np.uint8)}


def _patient_plan(cfg) -> list[tuple[int, int]]:
    """(patient_index, visit) per case: some patients have a follow-up study."""
    rng = np.random.default_rng([cfg.seed, 1])
    plan, p = [], 0
    while len(plan) < cfg.n_cases:
        k = int(rng.integers(1, cfg.cases_per_patient_max + 1))
        for v in range(k):
            if len(plan) < cfg.n_cases:
                plan.append((p, v))
        p += 1
    return plan


def _write_case(args):
    index, cfg, patient_index, visit, root = args
    truth, images = simulate_case(index, cfg, patient_index, visit)
    rows = []
    for mod in MODALITY_FILES:
        rel = f"{mod}/{truth.case_id}.png"
        write_png(Path(root) / rel, images[mod])
        arr = images[mod]
        rows.append({"case_id": truth.case_id, "patient_id": truth.patient_id, "modality": mod, "path": rel,
                     "height": arr.shape[0], "width": arr.shape[1], "dtype": str(arr.dtype)})
    return truth, rows


def generate(cfg, split: SplitConfig, out: Path, progress: bool = True) -> pd.DataFrame:
    """Write images, ``manifest.parquet`` and ``cases.parquet`` (truth) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = _patient_plan(cfg)
    first_extra = plan[-1][0] + 1 if plan else 0  # extra test cases: new patients, one study each
    extra = [(first_extra + k, 0) for k in range(cfg.test_cases)]
    jobs = [(i, cfg, p, v, str(out)) for i, (p, v) in enumerate(plan + extra)]
    truths, rows = [], []
    if cfg.workers > 1:
        with ProcessPoolExecutor(cfg.workers) as ex:
            it = ex.map(_write_case, jobs, chunksize=4)
            for t, r in tqdm(it, total=len(jobs), desc="generate", disable=not progress):
                truths.append(t)
                rows.extend(r)
    else:
        for job in tqdm(jobs, desc="generate", disable=not progress):
            t, r = _write_case(job)
            truths.append(t)
            rows.extend(r)
    n_main = len(plan) * len(MODALITY_FILES)
    manifest = with_extra_test(pd.DataFrame(rows[:n_main]), pd.DataFrame(rows[n_main:]), split.fractions, split.seed)
    manifest.to_parquet(out / "manifest.parquet", index=False)
    pd.DataFrame([asdict(t) for t in truths]).to_parquet(out / "cases.parquet", index=False)
    (out / "dataset.json").write_text(json.dumps({"dataset": cfg.dataset, "config": asdict(cfg)}, indent=2))
    return manifest


def contact_sheet(root: Path, out_png: Path, n: int = 6) -> None:
    """Save a figure: one row per case, columns US, MG, MRI, mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medops.data.io import read_image

    man = pd.read_parquet(Path(root) / "manifest.parquet")
    cases = pd.read_parquet(Path(root) / "cases.parquet").set_index("case_id")
    ids = sorted(man["case_id"].unique())[:n]
    fig, axes = plt.subplots(len(ids), 4, figsize=(10, 2.5 * len(ids)))
    axes = np.atleast_2d(axes)
    for r, cid in enumerate(ids):
        for c, mod in enumerate(MODALITY_FILES):
            path = man[(man.case_id == cid) & (man.modality == mod)]["path"].iloc[0]
            axes[r, c].imshow(read_image(Path(root) / path), cmap="gray")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(mod.upper())
        t = cases.loc[cid]
        axes[r, 0].set_ylabel(f"{cid}\n{t['shape']} {t['diameter_mm']:.0f} mm\ndensity {t['density']:.2f}", fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
