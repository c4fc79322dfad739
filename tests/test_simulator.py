"""The simulator: determinism, patient-level splits, and realism measured on the images."""

import dataclasses

import numpy as np
import pandas as pd

from medops.data.breast_trimodal import (
    US_DYNAMIC_RANGE_DB, power_law_noise, radial_power_slope, rayleigh_speckle, simulate_case,
)
from medops.data.io import read_image


def test_deterministic_by_seed(smoke_cfg):
    a = simulate_case(3, smoke_cfg.generate, 1, 0)[1]
    b = simulate_case(3, smoke_cfg.generate, 1, 0)[1]
    c = simulate_case(3, dataclasses.replace(smoke_cfg.generate, seed=99), 1, 0)[1]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["us"], c["us"])


def test_manifest_and_patient_split(dataset):
    man = pd.read_parquet(dataset / "manifest.parquet")
    assert set(man.columns) >= {"case_id", "patient_id", "modality", "path", "height", "width", "split"}
    assert (man.groupby("case_id").modality.nunique() == 4).all()
    assert (man.groupby("patient_id").split.nunique() == 1).all()
    assert set(man.split) <= {"train", "val", "test"}
    shapes = man.drop_duplicates("modality").set_index("modality")[["height", "width", "dtype"]]
    assert tuple(shapes.loc["us"]) == (256, 256, "uint8")
    assert tuple(shapes.loc["mg"]) == (512, 512, "uint16")
    assert tuple(shapes.loc["mri"]) == (256, 256, "uint16")


def test_speckle_is_rayleigh_with_point_snr_191():
    """Fully developed speckle: envelope mean/std ~ 1.91 (Burckhardt 1978)."""
    env = rayleigh_speckle((256, 256), np.random.default_rng(0))
    snr = env.mean() / env.std()
    assert abs(snr - 1.91) < 0.08


def test_us_log_compressed_and_tumour_hypoechoic_with_shadow(dataset):
    cases = pd.read_parquet(dataset / "cases.parquet")
    darker, shadowed = [], []
    for cid in cases.case_id:
        us = read_image(dataset / f"us/{cid}.png").astype(float)
        mask = read_image(dataset / f"mask/{cid}.png") > 0
        darker.append(us[mask].mean() < us[~mask].mean())
        rows = np.where(mask.any(1))[0]
        cols = np.where(mask.any(0))[0]
        below = us[rows.max() + 5:, cols.min():cols.max() + 1]
        if below.size:
            shadowed.append(below.mean() < us[~mask].mean())
    assert np.mean(darker) >= 0.9                 # hypoechoic lesion
    assert np.mean(shadowed) >= 0.5               # posterior acoustic shadowing in most cases
    assert US_DYNAMIC_RANGE_DB >= 40


def test_mammography_background_power_law_beta_near_3(dataset):
    betas = []
    for p in sorted((dataset / "mg").glob("*.png"))[:6]:
        betas.append(radial_power_slope(read_image(p).astype(float)))
    assert 2.5 <= np.median(betas) <= 3.5, betas


def test_power_law_generator_slope():
    assert 2.7 <= radial_power_slope(power_law_noise(256, 3.0, np.random.default_rng(1))) <= 3.3


def test_mri_lesion_enhances_and_misregistration_is_recorded(dataset):
    cases = pd.read_parquet(dataset / "cases.parquet")
    assert cases[["mri_rotation_deg", "mri_tx_px", "mri_ty_px"]].abs().to_numpy().max() > 0.5
    assert set(cases["shape"]) >= {"oval", "lobulated", "spiculated"} or len(cases) < 6
    ratios = []
    for cid in cases.case_id:
        mri = read_image(dataset / f"mri/{cid}.png").astype(float)
        mask = read_image(dataset / f"mask/{cid}.png") > 0
        ratios.append(np.percentile(mri[mask], 50) / np.percentile(mri[~mask], 50))
    assert np.median(ratios) > 1.5                # high lesion-to-tissue contrast


def test_generate_writes_atomically_and_refuses_overwrite(tmp_path, smoke_cfg, monkeypatch):
    from medops.runs.generate import generate
    from medops.errors import DataError

    monkeypatch.chdir(tmp_path)
    cfg = dataclasses.replace(smoke_cfg, sections={**smoke_cfg.sections,
                              "generate": dataclasses.replace(smoke_cfg.generate, n_cases=4, workers=1)})
    out = tmp_path / "data/raw/breast-trimodal"
    generate(cfg, "breast-trimodal", out)
    before = (out / "manifest.parquet").read_bytes()
    try:
        generate(cfg, "breast-trimodal", out)
        raise AssertionError("expected refusal")
    except DataError as exc:
        assert "no_overwrite" in str(exc) and "--force" in str(exc)
    assert (out / "manifest.parquet").read_bytes() == before
    assert (tmp_path / "reports/data/breast-trimodal_contact_sheet.png").stat().st_size > 10_000


def test_extra_test_cases_are_new_patients_in_the_test_split_and_change_nothing_else(tmp_path, smoke_cfg):
    """A test set sized for the claims (generate.test_cases, rare_disease.datasets.*.test_cases): the same
    simulator, new patients, test split only; the existing cases, images and splits stay as they were."""
    import dataclasses

    import pandas as pd

    from medops.data import breast_trimodal, rare_disease

    g = dataclasses.replace(smoke_cfg.generate, n_cases=12, workers=1)
    a = breast_trimodal.generate(g, smoke_cfg.split, tmp_path / "a", progress=False)
    b = breast_trimodal.generate(dataclasses.replace(g, test_cases=5), smoke_cfg.split, tmp_path / "b", progress=False)
    same = b[b.case_id.isin(a.case_id)].reset_index(drop=True)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), same, check_dtype=False)
    new = b[~b.case_id.isin(a.case_id)]
    assert new.case_id.nunique() == 5 and set(new.split) == {"test"} and not set(new.patient_id) & set(a.patient_id)
    assert (tmp_path / "a" / a.path.iloc[0]).read_bytes() == (tmp_path / "b" / a.path.iloc[0]).read_bytes()

    a = rare_disease.generate("gaucher-ct", 40, 0.2, 64, 11, smoke_cfg.split, tmp_path / "c", progress=False)
    b = rare_disease.generate("gaucher-ct", 40, 0.2, 64, 11, smoke_cfg.split, tmp_path / "d", progress=False,
                              test_cases=30)
    same = b[b.case_id.isin(a.case_id)].reset_index(drop=True)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), same[a.columns], check_dtype=False)
    new = b[~b.case_id.isin(a.case_id)].drop_duplicates("case_id")
    assert len(new) == 30 and set(new.split) == {"test"} and (new.label == "gaucher").sum() == 6   # same prevalence
