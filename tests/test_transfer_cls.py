"""transfer_cls (paper 002): simulators measured against imaging facts, the user-dataset reader, the
validation gate on bad input, backbones, losses, metrics and Grad-CAM."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT
from medops.config import SplitConfig, ValidateConfig, load_config
from medops.families.transfer_cls.config import Classification2DPreprocessConfig
from medops.data import rare_disease
from medops.data.io import read_image
from medops.errors import ConfigError, ValidationFailed
from medops.validation import validate_dataset

SPLIT = SplitConfig(seed=7, fractions={"train": 0.7, "val": 0.15, "test": 0.15})
VCFG = ValidateConfig(min_cases_per_class=3)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    out = {}
    for name in ("gaucher-ct", "ocular-fundus", "nf-mri"):
        rare_disease.generate(name, 40, 0.2, 96, 11, SPLIT, root / name, progress=False)
        out[name] = root / name
    return out


# ------------------------------------------------------------------ simulators: appearance, imbalance
def test_ct_is_dicom_in_hounsfield_units_with_published_tissue_values():
    rng = np.random.default_rng(0)
    hu, _ = rare_disease.ct_slice(256, rng)
    assert np.median(hu[:10, :10]) == pytest.approx(-1000, abs=40)            # air
    assert (hu > 300).mean() > 0.002                                          # bone present
    assert ((hu > -130) & (hu < -60)).mean() > 0.05                          # fat
    assert ((hu > 40) & (hu < 70)).mean() > 0.05                             # liver / spleen / muscle
    hu2, mask = rare_disease.ct_slice(256, np.random.default_rng(0), spleen_scale=3.0)
    assert mask.any() and 38 < float(np.median(hu2[mask])) < 55              # enlarged spleen: 40-50 HU


def test_ct_dicom_roundtrip_applies_the_rescale(tmp_path):
    hu, _ = rare_disease.ct_slice(64, np.random.default_rng(0))
    rare_disease.write_ct_dicom(tmp_path / "a.dcm", hu, "c1", 1.5)
    back = read_image(tmp_path / "a.dcm")
    assert back.dtype == np.float32 and np.abs(back - np.round(hu)).max() <= 1


def test_gaucher_cases_have_larger_spleens_and_disease_is_the_minority(sets):
    man = pd.read_parquet(sets["gaucher-ct"] / "manifest.parquet")
    cases = man.drop_duplicates("case_id")
    assert 0 < (cases.label == "gaucher").mean() <= 0.2
    assert cases.groupby("label").spleen_scale.median()["gaucher"] > 2 * cases.groupby("label").spleen_scale.median()["normal"]
    for split in ("train", "val", "test"):  # the minority class is present in every split
        assert set(cases[cases.split == split].label) == {"normal", "gaucher"}


def test_fundus_melanoma_is_larger_and_darker_than_nevus():
    d_mel, d_nev = [], []
    for s in range(12):
        for lesion, acc in (("melanoma", d_mel), ("nevus", d_nev)):
            rgb, mask = rare_disease.fundus_image(256, np.random.default_rng(s), lesion=lesion)
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
            acc.append((2 * np.sqrt(mask.sum() / np.pi), rgb[mask].mean(), rgb[ring].mean()))
    mel, nev = np.array(d_mel), np.array(d_nev)
    assert mel[:, 0].mean() > 2 * nev[:, 0].mean()                   # diameter: > 2 DD vs < 1.5 DD
    assert (mel[:, 1] < mel[:, 2]).all()                             # pigmented: darker than the fundus around it
    rgb, _ = rare_disease.fundus_image(128, np.random.default_rng(0))
    r, g, b = (rgb[40:90, 40:90, i].mean() for i in range(3))
    assert r > g > b                                                  # orange-red fundus
    assert rgb[0, 0].sum() == 0                                       # outside the circular field of view


def test_mri_sequences_have_the_textbook_tissue_contrasts():
    (t1, t2, flair), _ = rare_disease.brain_mri(256, np.random.default_rng(0), lesion="tumour")
    names = list(rare_disease.TISSUE)
    wm, gm, csf = (rare_disease.TISSUE[k] for k in ("wm", "gm", "csf"))
    assert wm[0] > gm[0] > csf[0]          # T1: WM brightest
    assert csf[1] > gm[1] > wm[1]          # T2: CSF brightest
    assert csf[2] < wm[2]                  # FLAIR: CSF nulled
    tum = rare_disease.TISSUE["tumour"]
    assert tum[1] > gm[1] and tum[2] > gm[2] and tum[0] <= wm[0]   # nerve-sheath tumour: T2/FLAIR bright
    bg = t1[:8, :8].astype(float)
    assert bg.mean() > 0 and bg.min() >= 0  # Rician magnitude: positive background
    assert "tumour" in names


# ------------------------------------------------------------------ reader and validation gate
def _user_tree(root: Path, n: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
            cv2.imwrite(str(root / cls / f"{cls}{i}.png"), img)
    return root


def test_folder_tree_and_csv_manifest_read_the_same_dataset(tmp_path):
    from medops.data.readers import load_manifest

    tree = _user_tree(tmp_path / "tree")
    a = load_manifest(tree, SPLIT.fractions, 7)
    assert sorted(a.label.unique()) == ["benign", "malignant"] and len(a) == 10
    assert set(a.split) == {"train", "val", "test"}
    csv = tmp_path / "csv"
    shutil.copytree(tree, csv)
    pd.DataFrame({"path": a.path, "label": a.label}).to_csv(csv / "labels.csv", index=False)
    b = load_manifest(csv, SPLIT.fractions, 7)
    assert sorted(b.path) == sorted(a.path)
    s = validate_dataset(tree, VCFG, tmp_path / "rep", progress=False, split_fractions=SPLIT.fractions, split_seed=7)
    assert s["status"] == "passed" and s["class_counts"] == {"benign": 5, "malignant": 5}


def test_a_user_jpeg_and_dicom_dataset_is_read(tmp_path):
    root = _user_tree(tmp_path / "u")
    img = cv2.imread(str(root / "benign" / "benign0.png"))
    cv2.imwrite(str(root / "benign" / "extra.jpg"), img)
    hu, _ = rare_disease.ct_slice(64, np.random.default_rng(0))
    rare_disease.write_ct_dicom(root / "malignant" / "ct.dcm", hu, "ct", 1.0)
    s = validate_dataset(root, VCFG, tmp_path / "rep", progress=False)
    assert s["class_counts"] == {"benign": 6, "malignant": 6}


def _failures(root, tmp_path, **kw):
    with pytest.raises(ValidationFailed) as exc:
        validate_dataset(root, VCFG, tmp_path / "rep", progress=False, **kw)
    return exc.value.lines


def test_bad_input_unreadable_file_in_a_class_folder_is_named(tmp_path):
    root = _user_tree(tmp_path / "u")
    (root / "benign" / "notes.txt").write_text("not an image")
    (root / "malignant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    lines = _failures(root, tmp_path)
    assert any("benign/notes.txt" in l and "rule readable" in l and "Fix:" in l for l in lines), lines
    assert any("malignant/broken.png" in l and "rule readable" in l for l in lines), lines
    assert (root / "benign" / "notes.txt").exists()                   # nothing of the user's is touched


def test_bad_input_class_folder_with_one_image(tmp_path):
    root = _user_tree(tmp_path / "u")
    (root / "rare").mkdir()
    shutil.copy(root / "benign" / "benign0.png", root / "rare" / "only.png")
    cv2.imwrite(str(root / "rare" / "only.png"), np.full((40, 40), 7, np.uint8))
    lines = _failures(root, tmp_path)
    assert any(l.startswith("class 'rare'") and "class_min_images" in l and "n_cases=1" in l for l in lines), lines


def test_bad_input_dicom_without_pixel_data(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    root = _user_tree(tmp_path / "u")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = generate_uid(), generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta, ds.PatientID, ds.Modality = meta, "x", "CT"
    ds.save_as(str(root / "malignant" / "empty.dcm"), enforce_file_format=True)
    lines = _failures(root, tmp_path)
    assert any("malignant/empty.dcm" in l and "no pixel data" in l for l in lines), lines


def test_bad_input_label_not_in_the_class_list(tmp_path):
    root = _user_tree(tmp_path / "u")
    from medops.data.readers import load_manifest

    man = load_manifest(root)
    rows = pd.DataFrame({"path": man.path, "label": man.label})
    rows.loc[0, "label"] = "benign_typo"
    rows.to_csv(root / "labels.csv", index=False)
    (root / "dataset.json").write_text(json.dumps({"task": "classification", "classes": ["benign", "malignant"]}))
    lines = _failures(root, tmp_path)
    assert any(rows.path[0] in l and "label_known" in l and "benign_typo" in l for l in lines), lines


def test_bad_input_grayscale_image_is_converted_for_rgb_backbones_and_logged(tmp_path, caplog):
    from medops.preprocess.classification_2d import preprocess_classification

    root = _user_tree(tmp_path / "u")
    cv2.imwrite(str(root / "benign" / "gray.png"), np.tile(np.arange(64, dtype=np.uint8), (64, 1)))
    validate_dataset(root, VCFG, tmp_path / "rep", progress=False)
    with caplog.at_level("WARNING"):
        idx = preprocess_classification(root, tmp_path / "pre", Classification2DPreprocessConfig(image_size=32), progress=False)
    stats = json.loads((tmp_path / "pre" / "preprocess.json").read_text())
    assert stats["converted_gray_to_rgb"] == 1 and int(idx.converted_gray.sum()) == 1
    assert "replicated to 3 channels" in caplog.text
    shard = np.load(tmp_path / "pre" / idx[idx.converted_gray].shard.iloc[0])["image"]
    assert shard.shape == (3, 32, 32) and np.array_equal(shard[0], shard[2])


def test_simulated_sets_pass_the_gate_and_preprocess_with_histogram_equalisation(sets, tmp_path):
    from medops.preprocess.classification_2d import preprocess_classification

    for name, root in sets.items():
        s = validate_dataset(root, VCFG, tmp_path / name, progress=False)
        assert s["labelled"] is True
    idx = preprocess_classification(sets["nf-mri"], tmp_path / "pre", Classification2DPreprocessConfig(image_size=48), progress=False)
    x = np.load(tmp_path / "pre" / idx.shard.iloc[0])["image"].astype(np.float32)
    assert x.shape == (3, 48, 48) and 0 <= x.min() and x.max() <= 1
    assert x[:, :3, :3].max() == 0                           # background (outside the head) zeroed
    head = x[:, 16:32, 16:32]
    assert abs(float(np.median(head)) - 0.5) < 0.25         # foreground equalised: mid-grey median
    again = preprocess_classification(sets["nf-mri"], tmp_path / "pre", Classification2DPreprocessConfig(image_size=48), progress=False)
    assert json.loads((tmp_path / "pre" / "preprocess.json").read_text())["computed"] == 0 and len(again) == len(idx)


def test_test_evaluation_makes_grad_cam_maps_only_where_they_are_used_and_they_equal_the_full_pass(sets, tmp_path):
    """Per-case evaluation computes Grad-CAM (a backward pass per case) only for the cases with a lesion mask
    (localisation scores) and those the figure shows; those maps, and so the localisation scores, are the same
    as from Grad-CAM over every test case (maps are per case: the batch does not change them)."""
    from medops.data.dataset import ClassificationDataset
    from medops.evaluation.classification import figure_cases, per_case_table
    from medops.explain import gradcam, localisation_scores
    from medops.models import get_model
    from medops.preprocess.classification_2d import preprocess_classification

    pre = tmp_path / "pre"
    idx = preprocess_classification(sets["nf-mri"], pre, Classification2DPreprocessConfig(image_size=48), progress=False)
    torch.manual_seed(0)
    net = get_model("transfer_cls", backbone="densenet201", num_classes=2, weights="none").eval()
    classes = ["normal", "nf_tumour"]
    df, cams, ds = per_case_table(net, pre, idx, classes, n_figure_cases=2)
    has_mask = ds.has_mask.numpy()
    shown = figure_cases(ds.labels.numpy(), 2, 2)
    computed = ~np.isnan(cams).all(axis=(1, 2))
    assert set(np.flatnonzero(computed)) == set(np.flatnonzero(has_mask)) | set(shown)
    assert computed.sum() < len(ds)                               # normals without a mask get no map
    full = gradcam(net, ClassificationDataset(pre, idx, "test").images, class_idx=1)
    np.testing.assert_allclose(cams[computed], full[computed], atol=1e-5)
    for i in np.flatnonzero(has_mask):
        assert df.energy_in_mask.iloc[i] == pytest.approx(localisation_scores(full[i], ds.masks[i].numpy())["energy_in_mask"], abs=1e-5, nan_ok=True)
    assert df.energy_in_mask[~has_mask].isna().all() and len(df) == len(ds)


# ------------------------------------------------------------------ backbones, losses, metrics, Grad-CAM
BACKBONES = ["vgg16", "resnet50", "densenet201", "inception_v3"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_head_is_sized_from_the_backbone_and_gradcam_works_on_it(backbone):
    from medops.explain import gradcam
    from medops.models import get_model

    net = get_model("transfer_cls", backbone=backbone, num_classes=3, weights="none")
    with torch.no_grad():
        feats = net.eval().features(torch.rand(1, 3, 48, 48))
    assert net.head[-1].in_features == feats.shape[1] == net.in_features
    assert net(torch.rand(2, 3, 48, 48)).shape == (2, 3)
    cam = gradcam(net, torch.rand(2, 3, 48, 48), class_idx=1)
    assert cam.shape == (2, 48, 48) and cam.min() >= 0 and cam.max() <= 1 + 1e-6


def test_unknown_backbone_lists_the_available_ones():
    from medops.models import get_model

    with pytest.raises(ConfigError) as exc:
        get_model("transfer_cls", backbone="resnet5000", num_classes=2)
    assert "resnet5000" in str(exc.value) and all(b in str(exc.value) for b in BACKBONES)


def test_feature_extraction_freezes_the_backbone_and_its_batchnorm():
    from medops.models import get_model

    net = get_model("transfer_cls", backbone="resnet50", num_classes=2, strategy="feature_extraction")
    before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("trunk.")}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 1e-2)
    net.train()
    loss = torch.nn.functional.cross_entropy(net(torch.rand(4, 3, 48, 48)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)     # weights and running stats unchanged
    assert any(p.requires_grad for p in net.head.parameters())


def _family_build(model_kw: dict):
    """Build a transfer_cls net with its starting weights the way training does (the family reads the files)."""
    from medops.families import get_family

    fcfg = load_config(ROOT / "params.yaml", profile="smoke").family("transfer_cls")
    fam = get_family("transfer_cls")
    return fam.build_model(fcfg, dataclasses.replace(fcfg.model, **model_kw), pd.DataFrame({"label_idx": [0, 1]}))


def test_imagenet_weights_never_download_and_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as exc:
        _family_build({"backbone": "densenet201", "weights": "imagenet"})
    msg = str(exc.value)
    assert "not in the local torch cache" in msg and str(tmp_path) in msg and "weights: source" in msg


def test_source_weights_load_the_pretrained_trunk_and_a_new_head(tmp_path, monkeypatch):
    from medops.models import get_model

    monkeypatch.chdir(tmp_path)
    src = get_model("transfer_cls", backbone="resnet50", num_classes=6)
    with pytest.raises(ConfigError, match="--pretrain resnet50"):
        _family_build({"backbone": "resnet50", "weights": "source"})
    ck = tmp_path / "models/transfer_cls/pretrained/resnet50/best.pt"
    ck.parent.mkdir(parents=True)
    torch.save({"model": src.state_dict()}, ck)
    net = _family_build({"backbone": "resnet50", "weights": "source"})
    assert torch.equal(net.trunk[0].weight, src.trunk[0].weight) and net.head[-1].out_features == 2
    fresh = get_model("transfer_cls", backbone="resnet50", num_classes=2, weights="source")  # models/ reads no file
    assert not torch.equal(fresh.trunk[0].weight, src.trunk[0].weight)


def test_focal_loss_downweights_easy_cases_and_class_weights_favour_the_minority():
    from medops.tasks.classification import ClassificationLoss, class_weights

    w = class_weights([0] * 8 + [1] * 2, 2, "inverse_frequency")
    assert torch.allclose(w, torch.tensor([10 / 16, 10 / 4]))
    logits = torch.tensor([[4.0, -4.0], [0.2, -0.2]])
    y = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    focal = ClassificationLoss("focal", None, gamma=2.0)
    easy, hard = (float(focal(logits[i:i + 1], y[i:i + 1])) for i in range(2))
    assert easy / hard < float(ce[0] / ce[1])                         # the easy case counts relatively less
    # gamma = 0: MONAI's focal loss is cross-entropy averaged over the one-hot class axis too (CE / C)
    assert float(ClassificationLoss("focal", None, gamma=0.0)(logits, y)) == pytest.approx(float(ce.mean()) / 2, rel=1e-4)


def test_metrics_and_the_paired_auc_test():
    from medops.metrics.classification import bootstrap_ci, classification_metrics, paired_auc_test

    y = torch.tensor([0, 0, 0, 1, 1])
    prob = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    m = classification_metrics(prob, y)
    assert m["accuracy"] == pytest.approx(0.6) and m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(4 / 6)
    ci = bootstrap_ci(prob.numpy(), y.numpy(), n_boot=200)
    assert ci["auc"][0] <= m["auc"] <= ci["auc"][1]
    rng = np.random.default_rng(0)
    yy = rng.integers(0, 2, 200)
    good = np.clip(yy * 0.6 + rng.random(200) * 0.5, 0, 1)
    bad = rng.random(200)
    assert paired_auc_test(yy, good, bad)["p"] < 0.01
    assert paired_auc_test(yy, bad, good)["p"] > 0.5
    assert paired_auc_test(yy, good, good)["p"] == 1.0


def test_localisation_scores():
    from medops.explain import localisation_scores

    cam = np.zeros((10, 10))
    cam[2:4, 2:4] = 1.0
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    s = localisation_scores(cam, mask)
    assert s == {"energy_in_mask": 1.0, "pointing_hit": 1.0, "mask_fraction": 0.09}
    s = localisation_scores(cam, ~mask)
    assert s["energy_in_mask"] == 0.0 and s["pointing_hit"] == 0.0


def test_gradcam_points_at_what_a_trained_model_uses():
    """A small CNN trained to find a bright square: its Grad-CAM (by layer name) puts most energy on the
    square and wins the pointing game, far above the square's area share (the chance level)."""
    from medops.explain import gradcam, localisation_scores

    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def batch(n):
        x = rng.normal(0.3, 0.1, (n, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 2, n)
        masks = np.zeros((n, 32, 32), bool)
        for i in np.flatnonzero(y):
            r, c = rng.integers(2, 22, 2)
            x[i, :, r:r + 8, c:c + 8] += 0.6
            masks[i, r:r + 8, c:c + 8] = True
        return torch.from_numpy(x), torch.from_numpy(y), masks

    net = torch.nn.Sequential()
    net.add_module("features", torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                                   torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()))
    net.add_module("head", torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2)))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(80):
        x, y, _ = batch(32)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y, masks = batch(64)
    cams = gradcam(net, x, class_idx=1, layer="features")
    scores = [localisation_scores(cams[i], masks[i]) for i in np.flatnonzero(y.numpy())]
    energy = np.mean([s["energy_in_mask"] for s in scores])
    chance = np.mean([s["mask_fraction"] for s in scores])
    assert energy > 3 * chance and np.mean([s["pointing_hit"] for s in scores]) > 0.8
