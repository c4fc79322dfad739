"""`nodule3d` (paper 004): real LIDC-IDRI annotations, the simulated chest CT built on them, the DICOM
series reader and its rules, the AUC loss, the ensemble weights, and the family end to end (slow)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import copy_project

BIN = Path(sys.executable).parent


# ------------------------------------------------------------------ the real annotations
@pytest.fixture(scope="module")
def nodules():
    from medops.data import lidc

    return lidc.nodules()


def test_lidc_nodules_are_grouped_from_real_reader_annotations(nodules):
    from medops.data import lidc

    # 6,859 reader annotations of 1,018 scans group into about as many nodules as the paper counts (2,669)
    assert 2500 <= len(nodules) <= 2800
    assert nodules.n_readers.between(1, 8).all() and (nodules.n_readers <= 4).mean() > 0.99
    # the label follows the aggregated rating: 4-5 malignant, 1-2 benign, 3 excluded by default
    assert (nodules.label[nodules.malignancy >= 4] == 1).all() and (nodules.label[nodules.malignancy <= 2] == 0).all()
    assert (nodules.label[nodules.malignancy == 3] == -1).all()
    benign3 = lidc.nodules(rating3="benign")
    assert (benign3.label[benign3.malignancy == 3] == 0).all()
    # the aggregation rule matters: max of the readers never rates lower than the median
    mx = lidc.nodules(aggregate="max")
    assert (mx.malignancy.to_numpy() >= nodules.malignancy.to_numpy()).all() and mx.malignancy.mean() > nodules.malignancy.mean()
    # diameters as in LIDC (>= 3 mm nodules; median about 6-7 mm)
    assert 5.0 < nodules.diameter_mm.median() < 9.0


def test_rasterised_contour_stack_matches_the_readers_area(nodules):
    from medops.data import lidc
    from medops.data.lidc_sim import rasterise

    row = nodules[nodules.diameter_mm.between(8, 12)].iloc[0]
    cont = lidc.annotation_contours(int(row.contour_annotation))
    m = rasterise(cont, row.pixel_spacing, row.slice_thickness)
    vol = m.sum() * row.pixel_spacing ** 2 * row.slice_thickness
    i = row.annotation_ids.index(int(row.contour_annotation))
    assert abs(vol - row.volumes_mm3[i]) / row.volumes_mm3[i] < 0.35


# ------------------------------------------------------------------ the simulator
@pytest.fixture(scope="module")
def sim(tmp_path_factory, smoke_cfg):
    from medops.data import lidc_sim

    out = tmp_path_factory.mktemp("lidc") / "raw"
    out.mkdir()
    cfg = dataclasses.replace(smoke_cfg.lidc_sim, n_nodules=16, workers=1)
    man = lidc_sim.generate(cfg, smoke_cfg.split, out, progress=False)
    return out, man, cfg


def test_simulated_ct_has_real_hounsfield_units_and_real_nodules(sim, smoke_cfg):
    from medops.data.dicom_series import read_series

    out, man, cfg = sim
    nod = pd.read_csv(out / "nodules.csv")
    assert set(nod.label) <= {"benign", "malignant"} and len(nod) >= 16
    lung, solid, calc = [], [], []
    for case in sorted(man.case_id.unique()):
        ann = json.loads((out / case / "annotation.json").read_text())
        v = read_series(out / case / "series")
        assert v.spacing[1] == pytest.approx(ann["pixel_spacing_mm"]) and v.spacing[0] == pytest.approx(ann["slice_thickness_mm"])
        core = np.zeros(v.hu.shape, bool)
        for n in ann["nodules"]:
            zyx = np.round(n["voxel_zyx"]).astype(int)
            assert np.allclose(v.voxel_of((n["x_mm"], n["y_mm"], n["z_mm"])), n["voxel_zyx"], atol=0.1)
            z, y, x = zyx
            core[max(0, z - 1):z + 2, max(0, y - 12):y + 13, max(0, x - 12):x + 13] = True
            centre = float(np.median(v.hu[z, y - 1:y + 2, x - 1:x + 2]))
            if n["calcified"] and n["ratings"]["calcification"] in (3, 5):
                calc.append(centre)
            elif n["texture_class"] == "solid" and not n["calcified"] and n["diameter_mm"] >= 6:
                solid.append(centre)
            assert n["lidc"]["contour_annotation"] in n["lidc"]["annotation_ids"] and n["contours"]
        body = v.hu > -500
        lung.append(np.median(v.hu[~core & ~body]))
    assert -900 < np.median(lung) < -800                     # lung parenchyma about -850 HU
    assert solid and -100 < np.median(solid) < 150            # solid nodule cores 0..100 HU (+ noise, PSF)
    if calc:
        assert min(calc) > 150                                # calcification >= +200 HU (PSF blurs the rim)
    info = json.loads((out / "dataset.json").read_text())
    assert sum(info["per_malignancy"].values()) == info["n_nodules"] and info["paper_table1"]["3"] == 957


def test_nodule_patches_are_centred_windowed_and_cached(sim, smoke_cfg, tmp_path):
    from medops.preprocess.nodule_patches import preprocess_nodules

    out, man, cfg = sim
    pcfg = dataclasses.replace(smoke_cfg.preprocess_nodule, workers=1)
    idx = preprocess_nodules(out, tmp_path / "pre", pcfg, progress=False)
    assert len(idx) == len(pd.read_csv(out / "nodules.csv"))
    z = np.load(tmp_path / "pre" / idx.shard.iloc[0])
    c = pcfg.cube
    assert z["image"].shape == (1, c, c, c) and 0 <= z["image"].min() and z["image"].max() <= 1
    stats = json.loads((tmp_path / "pre" / "preprocess.json").read_text())
    assert stats["resampled"] and stats["spacing_mm"] == pcfg.spacing_mm
    again = preprocess_nodules(out, tmp_path / "pre", pcfg, progress=False)
    assert json.loads((tmp_path / "pre" / "preprocess.json").read_text())["computed"] == 0
    assert list(again.shard) == list(idx.shard)
    # rated-3 (indeterminate) nodules are written labelled benign with their rating, and carried into the index
    nod = pd.read_csv(out / "nodules.csv")
    assert (nod[nod.malignancy == 3].label == "benign").all() and set(idx.malignancy) == set(nod.malignancy)


def test_rating3_policy_keeps_or_drops_indeterminate_nodules_in_training_never_in_test():
    from medops.families.nodule3d.family import rating3_policy

    idx = pd.DataFrame({"case_id": list("abcdef"), "split": ["train", "train", "val", "val", "test", "test"],
                        "malignancy": [3, 1, 3, 5, 3, 4], "label": ["benign"] * 3 + ["malignant", "benign", "malignant"]})
    ex = rating3_policy(idx, "exclude")
    assert list(ex.case_id) == ["b", "d", "f"]
    be = rating3_policy(idx, "benign")
    assert list(be.case_id) == ["a", "b", "c", "d", "f"]                  # rated 3 in test: never
    assert len(rating3_policy(idx.drop(columns="malignancy"), "exclude")) == 6   # your own data without ratings


def test_a_patch_crossing_the_scan_edge_is_padded_with_air():
    from medops.data.dicom_series import Volume
    from medops.preprocess.nodule_patches import extract_patch

    hu = np.full((10, 20, 20), 40.0, np.float32)
    vol = Volume(hu=hu, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), series_uid="1", patient_id="p", files=())
    patch, pad = extract_patch(vol, (0.0, 10.0, 9.0), 8, 1.0)      # centre on the x = 0 edge
    assert 0.3 < pad < 0.7
    assert patch.min() == -1000.0 and patch.max() == pytest.approx(40.0)


# ------------------------------------------------------------------ DICOM series: bad input
def _series(folder: Path, n=6, spacing=(2.0, 0.7, 0.7), modality="CT", series_uid="1.2.3", skip=None,
            float_nan=False):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        if k == skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, f"1.2.3.{k}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = CTImageStorage, f"1.2.3.{k}", series_uid
        ds.Modality, ds.PatientID = modality, "p1"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, k * spacing[0]], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.Rows, ds.Columns = list(spacing[1:]), 8, 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        if float_nan:
            ds.BitsAllocated = 32
            a = np.zeros((8, 8), np.float32)
            a[2, 2] = np.nan
            ds.FloatPixelData = a.tobytes()
        else:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.PixelData = np.full((8, 8), 1000, np.uint16).tobytes()
        ds.save_as(str(folder / f"{k:03d}.dcm"), enforce_file_format=True)
    return folder


@pytest.mark.parametrize("make, rule", [
    (lambda d: _series(d, skip=3), "missing_slice"),
    (lambda d: (_series(d), _series(d / "x", series_uid="9.9"), [shutil.move(str(f), d / f"b{f.name}") for f in (d / "x").iterdir()],
                (d / "x").rmdir()), "one_series"),
    (lambda d: _series(d, modality="MR"), "modality_ct"),
    (lambda d: (_series(d), (d / "notes.dcm").write_text("not dicom")), "dicom_readable"),
    (lambda d: _series(d, float_nan=True), "finite"),
])
def test_bad_dicom_series_is_named_with_the_rule_and_the_fix(tmp_path, make, rule):
    from medops.data.dicom_series import read_series
    from medops.errors import DataError

    d = tmp_path / "series"
    make(d)
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(DataError) as e:
        read_series(d)
    assert rule in e.value.rule and e.value.fix and str(d) in e.value.where
    assert sorted(p.name for p in d.iterdir()) == before          # nothing touched


def test_inconsistent_pixel_spacing_is_refused(tmp_path):
    import pydicom

    from medops.data.dicom_series import read_series
    from medops.errors import DataError

    d = _series(tmp_path / "s")
    f = d / "002.dcm"
    ds = pydicom.dcmread(f)
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(str(f))
    with pytest.raises(DataError, match="consistent_geometry"):
        read_series(d)
    v = read_series(_series(tmp_path / "ok"))
    assert v.hu.shape == (6, 8, 8) and v.spacing == (2.0, 0.7, 0.7) and float(v.hu.max()) == -24.0


def test_gate_names_bad_nodule_rows_and_annotations(sim, tmp_path, smoke_cfg):
    from medops.errors import ValidationFailed
    from medops.families import get_family
    from medops.validation import validate_dataset

    out, man, cfg = sim
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    nod = pd.read_csv(bad / "nodules.csv")
    nod.loc[0, "x_mm"] = 5000.0                                   # outside the scan
    nod.loc[1, "label"] = "probably-bad"                          # not a class
    nod.to_csv(bad / "nodules.csv", index=False)
    case = sorted(man.case_id.unique())[2]
    ann = json.loads((bad / case / "annotation.json").read_text())
    ann["nodules"][0]["contours"] = []
    (bad / case / "annotation.json").write_text(json.dumps(ann))
    spec = get_family("nodule3d", smoke_cfg).validation_spec(smoke_cfg, bad, "lidc-sim")
    with pytest.raises(ValidationFailed) as e:
        validate_dataset(bad, smoke_cfg.validate, tmp_path / "report", progress=False, spec=spec)
    text = "\n".join(e.value.lines)
    assert "centre_inside_volume" in text and nod.nodule_id[0] in text
    assert "label_known" in text and "probably-bad" in text
    assert "nodule_has_contour" in text and case in text
    assert pd.read_csv(bad / "nodules.csv").x_mm[0] == 5000.0    # the user's data is not touched
    ok = validate_dataset(out, smoke_cfg.validate, tmp_path / "report_ok", progress=False, spec=spec)
    assert ok["status"] == "passed" and "nodules.csv" in ok["files_sha256"]


def test_your_own_data_case_folders_and_a_centres_csv_pass_the_same_gate(sim, tmp_path, smoke_cfg):
    """A DICOM series folder per case plus nodules.csv (centres and labels only) goes through the same gate
    (the family builds the manifest; nothing is written into the data), then preprocessing assigns
    patient-level folds; a later edit of nodules.csv is caught."""
    from medops.errors import DataError
    from medops.families import get_family
    from medops.validation import require_passed, validate_dataset

    out, man, cfg = sim
    own = tmp_path / "own"
    for i, case in enumerate(sorted(man.case_id.unique())):
        dst = own / case if i % 2 else own / case / "series"          # both layouts: files in the case folder or series/
        shutil.copytree(out / case / "series", dst)
    nod = pd.read_csv(out / "nodules.csv")[["case_id", "nodule_id", "x_mm", "y_mm", "z_mm", "label"]]
    nod.to_csv(own / "nodules.csv", index=False)
    before = sorted(p.relative_to(own).as_posix() for p in own.rglob("*"))
    fam = get_family("nodule3d", smoke_cfg)
    spec = fam.validation_spec(smoke_cfg, own, "own")
    summary = validate_dataset(own, smoke_cfg.validate, tmp_path / "report", progress=False, spec=spec,
                               split_fractions=smoke_cfg.split.fractions, split_seed=smoke_cfg.split.seed)
    assert summary["status"] == "passed" and summary["n_cases"] == man.case_id.nunique()
    assert sorted(p.relative_to(own).as_posix() for p in own.rglob("*")) == before     # nothing written into the data
    require_passed(own, tmp_path / "report")
    idx, msg = fam.preprocess(dataclasses.replace(smoke_cfg), own, tmp_path / "pre")
    assert len(idx) == len(nod) and idx.fold.between(0, 4).all() and set(idx.split) == {"train", "val", "test"}
    assert idx.groupby("patient_id").fold.nunique().max() == 1                          # folds are patient-level
    nod.loc[0, "label"] = "malignant" if nod.label[0] == "benign" else "benign"
    nod.to_csv(own / "nodules.csv", index=False)
    with pytest.raises(DataError, match="validated_content"):
        require_passed(own, tmp_path / "report")


# ------------------------------------------------------------------ loss, ensemble weights, augmentation
def test_power_auc_loss_matches_eq12_and_is_zero_with_one_class():
    from medops.losses.auc import CEPowerAUCLoss, power_auc_loss

    s = torch.tensor([0.9, 0.6, 0.2, 0.7])
    y = torch.tensor([1, 1, 0, 0])
    pairs = [(0.9, 0.2), (0.9, 0.7), (0.6, 0.2), (0.6, 0.7)]
    for lam in (1.0, 2.0):
        want = sum((1 - (a - b)) ** lam for a, b in pairs) / (lam * 4)
        assert float(power_auc_loss(s, y, lam)) == pytest.approx(want, rel=1e-6)
    assert float(power_auc_loss(s, torch.ones(4, dtype=torch.long), 2.0)) == 0.0
    logits = torch.zeros(4, 2, requires_grad=True)
    CEPowerAUCLoss(alpha=1.0, lam=2.0)(logits, y).backward()
    g = logits.grad[:, 1] - logits.grad[:, 0]
    assert (g[y == 1] < 0).all() and (g[y == 0] > 0).all()      # descent raises positives, lowers negatives
    ce = torch.nn.functional.cross_entropy(torch.zeros(4, 2), y)
    assert float(CEPowerAUCLoss(alpha=0.0)(torch.zeros(4, 2), y)) == pytest.approx(float(ce))


def test_ensemble_weights_are_chosen_on_validation_scores():
    from medops.families.nodule3d.task import choose_weights
    from medops.models.nodule3d import simplex_grid

    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 20)
    good = y.float() * 0.5 + 0.5 * torch.rand(40, generator=g)
    noise = torch.rand(2, 40, generator=g)
    w = choose_weights(torch.stack([noise[0], good, noise[1]]), y, simplex_grid(3, 0.1))
    assert float(w.sum()) == pytest.approx(1.0) and int(torch.argmax(w)) == 1
    assert len(simplex_grid(3, 0.1)) == 66


def test_augmentation_flips_and_shifts_with_air_and_is_seeded():
    from medops.families.nodule3d.data import augment3d

    x = torch.rand(1, 8, 8, 8) + 0.1
    a = augment3d(x, torch.Generator().manual_seed(3), True, 2)
    b = augment3d(x, torch.Generator().manual_seed(3), True, 2)
    assert torch.equal(a, b) and a.shape == x.shape
    shifted = [augment3d(x, torch.Generator().manual_seed(s), False, 2) for s in range(8)]
    assert any(float((s == 0).float().mean()) > 0 for s in shifted)   # air (0) fills in where the cube moved


# ------------------------------------------------------------------ the family end to end (slow)
@pytest.mark.slow
def test_dvc_repro_whole_family_through_ablation_report_and_promotion(tmp_path, warm):
    """The family's stages run through `dvc repro` at smoke (a 5-cell, 2-fold ablation), each depending on the
    code it ran; the report is Table 3 shaped with the claims; the best cell is promoted."""
    from dvc_deps import uncovered

    from conftest import ROOT, edit_params

    dst = copy_project(tmp_path / "medops")

    def small(p):
        a = p["ablation"]["nodule3d"]
        a["seeds"] = [0, 1]
        a["cells"] = {k: a["cells"][k] for k in ("ensemble", "single_small", "ce", "ifm", "ifm_macro")}

    edit_params(dst / "params.yaml", small)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x", "MEDOPS_IMPORTS_LOG": str(tmp_path / "imports.jsonl")}
    env.pop("MLFLOW_TRACKING_URI", None)

    def sh(cmd):
        r = subprocess.run(cmd, cwd=dst, env=env, capture_output=True, text=True, shell=True)
        assert r.returncode == 0, f"{cmd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout + r.stderr

    sh("git init -q && git add -A && git commit -qm init && medops profile smoke")
    env.update(warm)        # the session's warm server: the stages run warm, as under `medops run`
    out = sh("dvc repro src/medops/families/nodule3d/dvc.yaml:nodule3d_evaluate "
             "src/medops/families/nodule3d/dvc.yaml:n3d_promote")
    env.pop("MEDOPS_WARM")
    assert "padded with air" in out and "val_auc" in out
    assert uncovered(dst, tmp_path / "imports.jsonl", ROOT) == []
    assert (dst / "reports/data/lidc-sim_contact_sheet.png").exists()
    # main model: the ensemble's weights chosen on validation after every epoch, stored with the model
    hist = pd.read_csv(dst / "models/nodule3d/history.csv")
    assert {"val_auc_8", "val_auc_16", "weight_8", "weight_12", "weight_16"} <= set(hist.columns)
    assert np.allclose(hist[["weight_8", "weight_12", "weight_16"]].sum(1), 1.0)
    assert "sub-model AUC" in sh("medops show nodule3d")
    m = json.loads((dst / "reports/nodule3d/metrics.json").read_text())
    assert {"accuracy", "recall", "precision", "auc", "f1", "specificity"} <= set(m["model"])
    assert set(m["ensemble_weights"]) == {"8", "12", "16"}
    sub = pd.read_csv(dst / "reports/nodule3d/subgroups.csv")
    assert {"diameter", "texture", "calcification"} >= set(sub.subgroup) and len(sub)
    for fig in ("roc.png", "calibration.png", "confusion.png"):
        assert (dst / "reports/nodule3d/figures" / fig).exists()
    # ablation over folds: each cell's seed k tested fold k, so the two folds' test nodules are disjoint
    a = pd.read_csv(dst / "models/nodule3d/cells/ensemble/seed0/per_case.csv")
    b = pd.read_csv(dst / "models/nodule3d/cells/ensemble/seed1/per_case.csv")
    assert not set(a.case_id) & set(b.case_id)
    rep = (dst / "reports/ablation/nodule3d/report.md").read_text()
    assert "Table 3" in rep and "MD (multi-scale ensemble): 92.65" in rep and "shown for context only" in rep
    cl = pd.read_csv(dst / "reports/ablation/nodule3d/claims.csv")
    assert {"ensemble > best single scale", "CE + AUC loss > CE", "IFM > its macro channel alone"} <= set(cl.claim)
    assert set(cl.verdict) <= {"reproduced", "not reproduced", "untestable"}
    promo = json.loads((dst / "reports/promotion/nodule3d.json").read_text())
    assert promo.get("champion") or promo.get("challenger")
    # prediction with the champion from a case folder (DICOM series + annotation.json), and a bad centre refused
    case = sorted((dst / "data/raw/lidc-sim").glob("lidc*/annotation.json"))[0].parent
    sh(f"medops predict --model models:/nodule3d@champion --input {case} --out {tmp_path / 'pred'}")
    res = [json.loads(p.read_text()) for p in sorted((tmp_path / "pred").glob("*.json"))]
    assert len(res) == len(json.loads((case / "annotation.json").read_text())["nodules"])
    for r in res:
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4 and r["predicted"] in ("benign", "malignant")
        assert (tmp_path / "pred" / r["gradcam_png"]).exists()
        cam = np.load(tmp_path / "pred" / r["gradcam_png"].replace(".png", ".npy"))
        assert cam.ndim == 3 and cam.shape == (16, 16, 16)          # a 3-D Grad-CAM map over the cube
    bad = tmp_path / "badcase"
    shutil.copytree(case / "series", bad / "series")
    (bad / "nodules.csv").write_text("x_mm,y_mm,z_mm\n9999,0,0\n")
    r = subprocess.run(f"medops predict --model models:/nodule3d@champion --input {bad} --out {tmp_path / 'pred2'}",
                       cwd=dst, env=env, capture_output=True, text=True, shell=True)
    assert r.returncode != 0 and "centre_inside_volume" in r.stdout + r.stderr
    assert not (tmp_path / "pred2").exists() or not any((tmp_path / "pred2").iterdir())


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_every_ablation_model_fits_the_profiles_cube(profile):
    """Every model of the ablation builds from params and runs on the profile's cube (a MONAI DenseNet with a
    block too many for a small cube pools below one voxel: caught here, not an hour into `make run`)."""
    import dataclasses

    import torch

    from conftest import ROOT
    from medops.config import load_config
    from medops.families import get_family

    cfg = load_config(ROOT / "params.yaml", profile=profile)
    fam, fcfg = get_family("nodule3d", cfg), cfg.family("nodule3d")
    cube = int(cfg.preprocess_nodule.cube)
    assert max(fcfg.model.scales) == cube
    for cell in fcfg.ablation.cells:
        m = fcfg.ablation.cell_model(cell, fcfg.model)
        if isinstance(m.branches, str):
            m = dataclasses.replace(m, branches=tuple(m.branches.split("_")))
        net = fam.build_model(fcfg, m, None, start_weights=False).eval()
        with torch.no_grad():
            out = net(torch.rand(2, 1, cube, cube, cube))
        assert out.shape == (2, 2) and torch.isfinite(out).all(), cell
