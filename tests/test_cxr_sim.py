"""Simulated chest radiographs and reports (issue 14, part 1): every report is true of its image, the
labeller reads the state back, hard negatives change one fact, and the images obey radiographic signs."""

from __future__ import annotations

import numpy as np
import pytest

from medops.data import cxr_sim as c

NORMAL = {"ctr": 0.44, **{f: None for f in c.FINDINGS}}


def _col(geo, u: float) -> int:
    return int(np.argmin(np.abs(geo["u"][0] - u)))


def _img(rng_seed=3, **findings):
    state = {**NORMAL, **findings}
    img, geo = c.render(state, np.random.default_rng(rng_seed), 256)
    return img.astype(np.float64), geo


def test_five_reports_per_state_each_true_and_read_back_exactly():
    rng = np.random.default_rng(0)
    for _ in range(200):
        state = c.draw_state(rng)
        reps = c.reports(state, rng)
        assert len(reps) == 5 and len(set(reps)) >= 2
        for r in reps:
            assert r.startswith("FINDINGS: ") and " IMPRESSION: " in r
            assert len(c._sentences(r.split("IMPRESSION:")[0])) == len(c.FINDINGS)   # one per finding, negations too
            assert c.read_findings(r) == {f: state[f] for f in c.FINDINGS}
        if not any(state[f] for f in c.FINDINGS):
            assert reps[0].endswith("No acute cardiopulmonary abnormality.")


def test_a_hard_negative_changes_exactly_one_fact():
    rng = np.random.default_rng(1)
    kinds = set()
    for _ in range(300):
        state = c.draw_state(rng)
        rep = c.reports(state, rng, 1)[0]
        neg, kind = c.hard_negative(state, rep, rng)
        kinds.add(kind)
        got = c.read_findings(neg)
        assert sum(got[f] != state[f] for f in c.FINDINGS) == 1, (kind, rep, neg)
    assert kinds == {"side", "severity", "negation"}


def test_triage_labels():
    assert c.triage(NORMAL) == "normal"
    assert c.triage({**NORMAL, "nodule": {"side": "left", "zone": "mid", "diameter_mm": 12}}) == "non_urgent"
    assert c.triage({**NORMAL, "effusion": {"side": "right", "size": "moderate"}}) == "non_urgent"
    assert c.triage({**NORMAL, "effusion": {"side": "right", "size": "large"}}) == "urgent"
    assert c.triage({**NORMAL, "pneumothorax": {"side": "left", "size": "small"}}) == "urgent"


def test_cardiothoracic_ratio_of_the_image_is_the_states():
    """Measured on the rendered geometry: widest heart / widest thorax (inner rib margins)."""
    rng = np.random.default_rng(2)
    ctrs = []
    for _ in range(12):
        state = c.draw_state(rng, {"cardiomegaly": 0.5})
        _, geo = c.render(state, rng, 256)
        heart_w = geo["heart"].sum(axis=1).max()
        lungs = geo["masks"]["right"] | geo["masks"]["left"]
        cols = np.nonzero(lungs.any(axis=0))[0]
        ratio = heart_w / (cols.max() - cols.min() + 1)
        assert ratio == pytest.approx(state["ctr"], abs=0.03)
        assert (ratio > 0.5) == bool(state["cardiomegaly"])
        ctrs.append(ratio)
    assert min(ctrs) < 0.5 < max(ctrs)


def test_intensity_order_lung_below_mediastinum_below_bone_and_12_bits():
    img, geo = _img()
    u, v = geo["u"], geo["v"]
    lung = np.median(img[geo["masks"]["right"] & (v > 0.3) & (v < 0.5)])
    heart = np.median(img[geo["heart"] & (np.abs(u - (geo["heart_right_border_u"] + geo["heart_left_border_u"]) / 2) < 0.05)
                          & (np.abs(v - geo["heart_cy"]) < 0.03)])
    spine = np.median(img[(np.abs(u) < 0.03) & (v > 0.2) & (v < 0.3)])
    assert lung < heart < spine
    assert img.max() <= 4095 and img.min() >= 0


def test_effusion_meniscus_is_higher_laterally_and_blunts_the_angle():
    img, geo = _img(effusion={"side": "left", "size": "moderate"})
    normal, _ = _img()
    u, v, n = geo["u"], geo["v"], img.shape[0]

    def fluid_top(col):
        prof = img[:, col] - normal[:, col]         # the fluid's own opacity (same patient; far above the noise)
        rows = np.nonzero(prof[: int(0.8 * n)] > 200)[0]
        return rows.min()

    lateral, medial = _col(geo, 0.70), _col(geo, geo["heart_left_border_u"] + 0.04)
    assert fluid_top(lateral) < fluid_top(medial)            # a meniscus: higher at the chest wall
    angle = geo["masks"]["left"] & (u > 0.55) & (v > geo["dome"]["left"])
    assert (img - normal)[angle].mean() > 300                # the costophrenic angle is filled


def _border_step(img, geo, u_border, row):
    col = _col(geo, u_border)
    return abs(img[row - 2:row + 3, col - 8:col - 3].mean() - img[row - 2:row + 3, col + 3:col + 8].mean())


def test_silhouette_sign_middle_lobe_hides_the_heart_border_lower_lobe_the_diaphragm():
    normal, geo = _img()
    row = int(geo["heart_cy"] * normal.shape[0])
    ref = _border_step(normal, geo, geo["heart_right_border_u"], row)
    rml, g1 = _img(consolidation={"side": "right", "lobe": "middle"})
    rll, g2 = _img(consolidation={"side": "right", "lobe": "lower"})
    assert _border_step(rml, g1, g1["heart_right_border_u"], row) < 0.35 * ref      # border lost
    assert _border_step(rll, g2, g2["heart_right_border_u"], row) > 0.5 * ref       # border kept
    n = normal.shape[0]
    col = _col(geo, -0.42)
    dome = int(geo["dome"]["right"] * n)

    def dome_step(img):
        return img[dome + 2:dome + 7, col - 2:col + 3].mean() - img[dome - 6:dome - 1, col - 2:col + 3].mean()

    assert dome_step(rll) < 0.35 * dome_step(normal)                                 # hemidiaphragm lost


def test_pneumothorax_is_a_lucent_rim_without_lung_markings():
    img, geo = _img(pneumothorax={"side": "right", "size": "large"})
    normal, _ = _img()
    u, v = geo["u"], geo["v"]
    rim = geo["masks"]["right"] & (u < -0.62) & (v > 0.2) & (v < 0.35)
    assert img[rim].mean() < normal[rim].mean() - 50          # darker: air without lung
    assert geo["shift"] > 0                      # a large one pushes the mediastinum away (to the patient's left)


def test_the_dataset_on_disk_images_reports_split_and_contact_sheet(tmp_path, smoke_cfg):
    import cv2
    import pandas as pd

    man = c.generate(24, 128, 7, smoke_cfg.split, tmp_path / "raw", progress=False)
    assert len(man) == 24 and set(man.split) == {"train", "val", "test"} and set(man.label) <= set(c.TRIAGE)
    img = cv2.imread(str(tmp_path / "raw" / man.path.iloc[0]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (128, 128) and img.max() <= 4095
    reps = pd.read_csv(tmp_path / "raw/reports.csv")
    assert len(reps) == 24 * 5 and reps.groupby("case_id").size().eq(5).all()
    import json

    states = {d["case_id"]: d for d in map(json.loads, (tmp_path / "raw/findings.jsonl").read_text().splitlines())}
    for r in reps.itertuples():
        assert c.read_findings(r.report) == {f: states[r.case_id][f] for f in c.FINDINGS}
    neg = pd.read_csv(tmp_path / "raw/hard_negatives.csv")
    assert len(neg) == 24 and set(neg.changed) <= {"side", "severity", "negation"}
    c.contact_sheet(tmp_path / "raw", tmp_path / "sheet.png")
    assert (tmp_path / "sheet.png").stat().st_size > 10000
