"""Simulated PA chest radiographs and their reports, drawn from one hidden state of findings (issue 14,
part 1: the data of the `vl_fusion` family, paper 003 applied to radiographs and reports).

Every case has a *state* (:func:`draw_state`): the cardiothoracic ratio and, each with its own prevalence,
cardiomegaly, pleural effusion (side, size), pneumothorax (side, size), consolidation (side, lobe, air
bronchograms), a nodule or mass (side, zone, diameter ≥ 8 mm), lobar atelectasis and pulmonary oedema
(severity). The image (:func:`render`) and five reference reports (:func:`reports`) are both made from
that state, so every report is true of its image by construction, and :func:`read_findings` reads the
state back out of a report (the clinical-correctness labeller; it recovers the state exactly from every
reference report — tested).

**Image physics** (projection radiography, not any target metric): a line integral of attenuation
through soft tissue (μ 0.20 /cm, water at ~60 keV), aerated lung (μ 0.05 /cm, density ~0.25 g/cm³) and
bone (μ 0.48 /cm) over body, lungs, heart, mediastinum, diaphragm domes (right higher), spine, posterior
ribs and clavicles, with branching vessel markings from the hila; ``I = I0 exp(-Σ μ t)``, quantum
(Poisson) noise, scatter as a broad blur of the primary (scatter fraction ~0.4 for a chest), the log
transform ``-ln(I / I0)`` and 12-bit storage (bright = attenuating, as radiographs are read).

**Radiological signs**: cardiomegaly = heart width / thoracic width > 0.5; effusion = fluid replacing
basal lung with a meniscus (higher laterally) and a blunted costophrenic angle, a large one shifting the
mediastinum away; pneumothorax = the lung edge retracted from the chest wall with a visceral pleural
line and no lung markings beyond it; consolidation = airspace opacity of a lobe with lucent air
bronchograms, obeying the silhouette sign (middle lobe / lingula: the heart border is lost; lower
lobes: the hemidiaphragm is lost, the heart border kept); nodule/mass = a soft-tissue sphere;
atelectasis = a dense, shrunken lobe with ipsilateral volume loss (raised hemidiaphragm); oedema =
perihilar "bat-wing" haze with Kerley B lines at the bases.
"""

from __future__ import annotations

import re

import numpy as np

FINDINGS = ("cardiomegaly", "effusion", "pneumothorax", "consolidation", "nodule", "atelectasis", "oedema")
LOBES = {"right": ("upper", "middle", "lower"), "left": ("upper", "lingula", "lower")}
SIDES = ("right", "left")
MU = {"soft": 0.20, "lung": 0.05, "bone": 0.48}          # linear attenuation, 1/cm (~60 keV effective)
TRIAGE = ("normal", "non_urgent", "urgent")
PREVALENCE = {"cardiomegaly": 0.2, "effusion": 0.18, "pneumothorax": 0.08, "consolidation": 0.18,
              "nodule": 0.12, "atelectasis": 0.1, "oedema": 0.1}


# ------------------------------------------------------------------ the hidden state
def draw_state(rng: np.random.Generator, prevalence: dict | None = None) -> dict:
    """One patient's findings. Absent findings are ``None``; ``ctr`` is always set (normal 0.36-0.49)."""
    p = {**PREVALENCE, **(prevalence or {})}
    has = {f: bool(rng.random() < p[f]) for f in FINDINGS}
    side = lambda: str(rng.choice(SIDES))  # noqa: E731
    s: dict = {"ctr": float(np.clip(rng.normal(0.43, 0.03), 0.36, 0.49))}
    if has["cardiomegaly"]:
        s["ctr"] = float(rng.uniform(0.53, 0.66))
    s["cardiomegaly"] = {"ctr": round(s["ctr"], 2)} if has["cardiomegaly"] else None
    s["effusion"] = {"side": str(rng.choice(("right", "left", "bilateral"), p=(0.45, 0.35, 0.2))),
                     "size": str(rng.choice(("small", "moderate", "large"), p=(0.45, 0.35, 0.2)))} if has["effusion"] else None
    s["pneumothorax"] = {"side": side(), "size": str(rng.choice(("small", "large"), p=(0.6, 0.4)))} if has["pneumothorax"] else None
    if has["consolidation"]:
        sd = side()
        s["consolidation"] = {"side": sd, "lobe": str(rng.choice(LOBES[sd]))}
    else:
        s["consolidation"] = None
    if has["nodule"]:
        d = int(rng.choice([rng.integers(8, 30), rng.integers(30, 60)], p=(0.75, 0.25)))
        s["nodule"] = {"side": side(), "zone": str(rng.choice(("upper", "mid", "lower"))), "diameter_mm": d}
    else:
        s["nodule"] = None
    if has["atelectasis"]:
        sd = side()
        lobes = [lb for lb in LOBES[sd] if not (s["consolidation"] and s["consolidation"]["side"] == sd
                                                  and s["consolidation"]["lobe"] == lb)]
        s["atelectasis"] = {"side": sd, "lobe": str(rng.choice(lobes))}
    else:
        s["atelectasis"] = None
    s["oedema"] = {"severity": str(rng.choice(("mild", "moderate", "severe"), p=(0.4, 0.4, 0.2)))} if has["oedema"] else None
    return s


def triage(state: dict) -> str:
    """urgent: a pneumothorax or a large effusion; non-urgent: any other finding; normal: none."""
    if state["pneumothorax"] or (state["effusion"] and state["effusion"]["size"] == "large"):
        return "urgent"
    return "non_urgent" if any(state[f] for f in FINDINGS) else "normal"


# ------------------------------------------------------------------ the image
def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(a.astype(np.float32), (0, 0), sigma) if sigma > 0 else a


def _vessels(rng, n: int, hilum, mask, px_mm: float, n_trees: int = 12, d0_mm: float = 9.0) -> np.ndarray:
    """Branching tubes (vessels, or airways for air bronchograms) from ``hilum`` (row, col), staying inside
    ``mask``: the path length (cm) through each tube, thinning toward the periphery."""
    import cv2

    out = np.zeros((n, n), np.float32)
    step = max(1.0, 2.0 * 256 / n)
    for _ in range(n_trees):
        stack = [(float(hilum[0]), float(hilum[1]), rng.uniform(-np.pi, np.pi), d0_mm)]
        while stack:
            y, x, ang, d = stack.pop()
            for _ in range(int(120 / px_mm)):
                ang += rng.normal(0, 0.08)
                ny, nx = y + np.sin(ang) * step, x + np.cos(ang) * step
                if not (0 <= int(ny) < n and 0 <= int(nx) < n) or not mask[int(ny), int(nx)] or d < 0.8:
                    break
                cv2.line(out, (int(round(x)), int(round(y))), (int(round(nx)), int(round(ny))), float(d / 4),
                         max(1, int(round(d / px_mm))))
                y, x, d = ny, nx, d * 0.99
                if rng.random() < 0.04 and len(stack) < 40:
                    stack.append((y, x, ang + rng.choice((-0.7, 0.7)), d * 0.75))
    return _blur(out, 0.7)


def _smooth_field(rng, n: int, scale: float) -> np.ndarray:
    f = _blur(rng.normal(size=(n, n)).astype(np.float32), scale)
    return (f - f.mean()) / (f.std() + 1e-6)


def render(state: dict, rng: np.random.Generator, size: int = 256, dose: float = 3e4) -> tuple[np.ndarray, dict]:
    """The PA radiograph of ``state`` (uint16, 12-bit) and its geometry (masks, borders and the line integral,
    for the realism tests). Coordinates: ``u`` -1 (patient's right, image left) .. 1, ``v`` 0 (top) .. 1."""
    n = size
    px_mm = 430.0 / n                                                   # a 43 cm detector
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    # the patient's own anatomy (drawn first: the same seed gives the same patient with other findings)
    body_k, dome_dv, heart_dv, rib_k = rng.uniform(0.92, 1.08), rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), \
        rng.uniform(0.95, 1.05)
    dose = dose * rng.uniform(0.5, 2.0)                                 # exposure: noise differs between patients
    u, v = (xx - n / 2) / (n / 2 * body_k), yy / n
    col_of = lambda uu: n / 2 + uu * n / 2 * body_k  # noqa: E731
    ef, at, px = state["effusion"], state["atelectasis"], state["pneumothorax"]
    shift = 0.0                                                         # mediastinal shift (+: to the patient's left)
    if ef and ef["size"] == "large" and ef["side"] != "bilateral":
        shift += 0.07 if ef["side"] == "right" else -0.07             # away from the fluid
    if px and px["size"] == "large":
        shift += 0.04 if px["side"] == "right" else -0.04
    if at and at["lobe"] in ("upper", "lower"):
        shift += -0.03 if at["side"] == "right" else 0.03             # toward a collapsed lobe
    # body: neck, shoulders, a barrel-shaped thorax 22 cm deep
    half_w = np.where(v < 0.10, 0.24, np.minimum(0.24 + (v - 0.10) * 6.0, 0.86 - 0.15 * np.clip(v - 0.6, 0, None)))
    body_t = 22.0 * np.sqrt(np.clip(1 - (u / half_w) ** 2, 0, 1))
    # heart and mediastinum
    thorax_w = 2 * 0.74
    hw = state["ctr"] * thorax_w / 2
    h_right = -0.17 - 0.25 * (hw - 0.32) + shift                     # right atrial border ~4 cm right of midline
    hcx, hcy, hry = h_right + hw, 0.60 + heart_dv, 0.155
    r2 = ((u - hcx) / hw) ** 2 + ((v - hcy) / hry) ** 2
    heart = r2 < 1
    heart_t = np.where(heart, 12.0 * np.sqrt(np.clip(1 - r2, 0, 1)), 0)
    knob = ((u - 0.14 - shift) / 0.05) ** 2 + ((v - 0.30) / 0.035) ** 2 < 1      # aortic knob
    medi = (((np.abs(u - shift) < 0.125) & (v > 0.08) & (v < 0.5)) | ((np.abs(u - shift) < 0.09) & (v > 0.08))) | knob
    # lungs: apex ~v 0.12, lateral edge at the ribs, domes of the diaphragm (the right higher)
    dome = {"right": 0.655 + dome_dv, "left": 0.685 + dome_dv}
    if at:
        dome[at["side"]] -= 0.035                                       # volume loss raises the hemidiaphragm
    lung_t = np.zeros((n, n), np.float32)
    masks, base_of = {}, {}
    for sd, sgn in (("right", -1.0), ("left", 1.0)):
        lat = 0.74 * np.sqrt(np.clip((v - 0.10) / 0.22, 0, 1))         # lateral edge (rounded apex)
        base = dome[sd] + 0.09 * ((u - sgn * 0.42) / 0.40) ** 2        # dome, deepest at the costophrenic angle
        base_of[sd] = base
        m = (sgn * u > 0.02) & (sgn * u < lat) & (v > 0.10) & (v < base) & ~medi & ~heart
        masks[sd] = m
        depth = np.sqrt(np.clip(1 - ((sgn * u - 0.40) / 0.42) ** 2, 0, 1)) * np.clip((v - 0.10) / 0.06, 0, 1)
        lung_t += np.where(m, 16.0 * depth * np.clip((base - v) / 0.04, 0, 1), 0)
    lung_t = np.minimum(lung_t, np.clip(body_t - 4.0, 0, None))        # chest wall: ~2 cm front and back
    lung_behind_heart = np.where(heart & (v < np.minimum(base_of["left"], base_of["right"])), 4.0, 0)
    lung_t = lung_t + lung_behind_heart * np.clip(1 - r2, 0, 1)        # the lower lobes wrap behind the heart
    geo = {"masks": masks, "heart": heart, "px_mm": px_mm, "u": u, "v": v, "dome": dict(dome), "shift": shift,
           "heart_right_border_u": h_right, "heart_left_border_u": h_right + 2 * hw, "heart_cy": hcy,
           "thorax_w": thorax_w, "base": base_of}
    lung_mask = masks["right"] | masks["left"]
    soft_in_lung = np.zeros((n, n), np.float32)                          # vessel markings
    for sd, hu in (("right", -0.20), ("left", 0.22)):
        soft_in_lung += _vessels(rng, n, (0.44 * n, col_of(hu + shift)), masks[sd], px_mm)
    # --- findings: soft tissue or fluid replacing the air of the lung, or air without lung
    gap = np.zeros((n, n), bool)
    pleural_line = np.zeros((n, n), np.float32)
    if px:
        sgn = -1 if px["side"] == "right" else 1
        m = masks[px["side"]]
        edge = np.where(m, sgn * u, -9).max(axis=1, keepdims=True)    # the chest wall, row by row
        rim = (0.06 if px["size"] == "small" else 0.20) * np.clip(1.25 - v, 0, None)   # widest at the apex
        gap = m & (sgn * u > edge - rim)
        pleural_line = np.where(m & (np.abs(sgn * u - (edge - rim)) < 2.5 / n), 0.25, 0)
        lung_t = np.where(m & ~gap & (sgn * u > edge - rim - 0.08), lung_t * 0.8, lung_t)   # the collapsing lung
    soft_in_lung = np.where(gap, 0, soft_in_lung)
    fluid = np.zeros((n, n), np.float32)
    if ef:
        for sd in (SIDES if ef["side"] == "bilateral" else (ef["side"],)):
            sgn = -1 if sd == "right" else 1
            level = {"small": 0.06, "moderate": 0.17, "large": 0.32}[ef["size"]]
            t = np.clip(sgn * u / 0.74, 0, 1)                          # 0 medial .. 1 lateral
            top = dome[sd] + 0.05 - level - 0.12 * t ** 2               # meniscus: higher laterally
            fluid += np.where(masks[sd] & (v > top), lung_t * np.clip((v - top) / 0.02, 0, 1), 0)
    opaque = np.zeros((n, n), np.float32)
    for kind in ("consolidation", "atelectasis"):
        c = state[kind]
        if not c:
            continue
        region, depth = _lobe(c["side"], c["lobe"], u, v, masks, geo, shrink=kind == "atelectasis")
        if kind == "consolidation":                                     # patchy airspace opacity, solid at the border
            hb = geo["heart_right_border_u"] if c["side"] == "right" else geo["heart_left_border_u"]
            solid = (np.abs(u - hb) < 0.08) | (geo["base"][c["side"]] - v < 0.045)   # against heart / diaphragm
            region = region & ((_smooth_field(rng, n, n / 30) > -1.3) | solid)
        depth = depth * (0.92 if c["lobe"] == "upper" else 1.0)
        dens = np.where(region, lung_t * depth, 0).astype(np.float32)
        if kind == "consolidation" and region.any():                    # air bronchograms: lucent branching airways
            ys, xs = np.nonzero(region)
            j = int(np.argmin(np.abs(xs - n / 2)))                      # from the medial side of the opacity
            tubes = _vessels(rng, n, (float(ys[j]), float(xs[j])), region, px_mm, n_trees=5, d0_mm=4.0) > 0.1
            dens = np.where(tubes & ~solid, dens * 0.5, dens)
        opaque += np.maximum(_blur(dens, 2.0), dens)                   # a soft outer edge, full inside
    nodule_t = np.zeros((n, n), np.float32)
    nod = state["nodule"]
    if nod:
        sgn = -1 if nod["side"] == "right" else 1
        cy = {"upper": 0.27, "mid": 0.42, "lower": 0.55}[nod["zone"]]
        cu = sgn * 0.45 + shift
        r = nod["diameter_mm"] / 2 / px_mm
        d2 = (xx - col_of(cu)) ** 2 + (yy - cy * n) ** 2
        nodule_t = np.sqrt(np.clip(r * r - d2, 0, None)) * 2 * px_mm / 10     # cm of soft tissue through a sphere
        geo["nodule_centre"] = (int(cy * n), int(col_of(cu)))
    oed = np.zeros((n, n), np.float32)
    if state["oedema"]:
        k = {"mild": 0.12, "moderate": 0.22, "severe": 0.35}[state["oedema"]["severity"]]
        for hu in (-0.2 + shift, 0.22 + shift):                        # perihilar "bat wings"
            oed += k * lung_t * np.exp(-(((u - hu) / 0.25) ** 2 + ((v - 0.45) / 0.15) ** 2))
        kerley = (np.abs(np.sin(yy * px_mm / 7.0 * np.pi)) > 0.96) & (v > 0.5) & (np.abs(u) > 0.55) & lung_mask
        oed += np.where(kerley, 0.6, 0)
    soft_extra = np.minimum(fluid + opaque + nodule_t + oed + soft_in_lung + pleural_line, lung_t)
    air = np.clip(lung_t - soft_extra, 0, None)
    soft = np.clip(body_t - lung_t, 0, None) + soft_extra
    # bone (cm along the ray): spine, posterior ribs curving down laterally, clavicles
    bone = np.where((np.abs(u - 0.3 * shift) < 0.06) & (v > 0.02), 3.0, 0).astype(np.float32)
    bone += np.where((np.abs(u - 0.3 * shift) < 0.06) & (np.sin(yy * px_mm / 28 * np.pi) > 0.8), 0.6, 0)  # end plates
    for k in range(10):
        v0 = 0.13 + k * 0.056 * rib_k
        for sgn in (-1, 1):
            s_ = np.clip((sgn * u - 0.06) / 0.72, 0, 1)
            vc = v0 - 0.05 * s_ + 0.24 * s_ ** 2                         # up and out, then down at the lateral arc
            d = np.abs(v - vc)
            rib = (d < 0.011) & (sgn * u > 0.06) & (sgn * u < 0.80) & (body_t > 0)
            bone += np.where(rib, 0.7 + 0.5 * (d > 0.007), 0)          # denser cortex at the edges
    for sgn in (-1, 1):
        s_ = np.clip((sgn * u - 0.07) / 0.45, 0, 1)
        clav = (np.abs(v - (0.15 - 0.06 * s_ + 0.02 * np.sin(s_ * np.pi))) < 0.013) & (sgn * u > 0.07) & (sgn * u < 0.52)
        bone += np.where(clav, 1.4, 0)
    bone = np.where(body_t > 0, bone, 0)
    soft = np.clip(soft - bone, 0, None)
    L = MU["soft"] * soft + MU["lung"] * np.where(gap, 0.0, air) + MU["bone"] * bone
    geo["line_integral"] = L
    primary = dose * np.exp(-L)
    scatter = 0.4 * _blur(primary, n / 12)
    counts = rng.poisson(primary + scatter).astype(np.float32)
    p = -np.log(np.clip(counts, 1, None) / (dose * 1.4))
    img = np.clip((p - 1.2) / 4.8, 0, 1) * 4095                        # the detector's window, 12 bits
    return np.round(img).astype(np.uint16), geo


def _lobe(side: str, lobe: str, u, v, masks, geo, shrink: bool = False) -> tuple[np.ndarray, np.ndarray | float]:
    """A lobe's region in projection and the share of the lung's depth it fills. The middle lobe and the
    lingula lie against the heart (its border is lost: the silhouette sign); the lower lobes are posterior
    and fill the whole depth only just above the diaphragm (the hemidiaphragm is lost, the heart border
    kept). ``shrink``: a collapsed lobe, smaller and denser."""
    m = masks[side]
    hb = geo["heart_right_border_u"] if side == "right" else geo["heart_left_border_u"]
    k = 0.6 if shrink else 1.0
    if lobe == "upper":
        return m & (v < 0.12 + 0.26 * k), 1.0 if shrink else 0.9
    if lobe in ("middle", "lingula"):
        return m & (v > 0.42) & (v < geo["heart_cy"] + 0.1) & (np.abs(u - hb) < 0.22 * k), 1.0
    base = geo["base"][side]                                            # the diaphragm under each column
    depth = 0.45 + 0.55 * np.clip(1.5 - (base - v) / 0.035, 0, 1)
    return m & (v > geo["dome"][side] - 0.20 * k), (1.0 if shrink else depth)


# ------------------------------------------------------------------ the reports
_PHRASES = {
    "cardiomegaly": (["The heart is enlarged (cardiothoracic ratio {ctr:.2f}).", "Cardiomegaly, cardiothoracic ratio {ctr:.2f}.",
                      "The cardiac silhouette is enlarged, cardiothoracic ratio {ctr:.2f}."],
                     ["Heart size is normal.", "The cardiac silhouette is within normal limits.", "No cardiomegaly."]),
    "effusion": (["{Size} {side} pleural effusion{shift}.", "There is a {size} {side} pleural effusion with blunting of the "
                  "costophrenic angle{shift}.", "{Size} {side} pleural fluid{shift}."],
                 ["No pleural effusion.", "No pleural effusion; the costophrenic angles are sharp."]),
    "pneumothorax": (["{Size} {side} pneumothorax.", "A {side} visceral pleural line with absent lung markings beyond it: "
                      "{size} pneumothorax.", "There is a {size} {side} pneumothorax."],
                     ["No pneumothorax.", "There is no pneumothorax."]),
    "consolidation": (["Consolidation in the {where} with air bronchograms{sil}.",
                       "Airspace opacity of the {where}, consistent with consolidation{sil}."],
                      ["No focal consolidation.", "No consolidation; the lungs are clear."]),
    "nodule": (["A {d} mm {kind} in the {side} {zone} zone.", "{Kind} of {d} mm in the {side} {zone} zone."],
               ["No pulmonary nodule or mass.", "No nodule or mass is seen."]),
    "atelectasis": (["Atelectasis of the {where} with volume loss.", "{Where} atelectasis."],
                    ["No atelectasis.", "No lobar collapse or atelectasis."]),
    "oedema": (["{Sev} pulmonary oedema with perihilar haziness and Kerley B lines.", "{Sev} interstitial and alveolar "
                "pulmonary oedema."], ["No pulmonary oedema.", "The pulmonary vasculature is normal, no oedema."]),
}

def _where(s: dict) -> str:
    return "lingula" if s["lobe"] == "lingula" else f"{s['side']} {s['lobe']} lobe"


def _sentence(f: str, s: dict | None, rng) -> str:
    pos, neg = _PHRASES[f]
    if s is None:
        return str(rng.choice(neg))
    t = str(rng.choice(pos))
    kw = dict(s)
    if f == "effusion":
        other = {"right": "left", "left": "right"}.get(s["side"])
        kw["shift"] = f", with mediastinal shift to the {other}" if s["size"] == "large" and other else ""
    if f == "consolidation":
        kw["sil"] = {"middle": ", obscuring the right heart border", "lingula": ", obscuring the left heart border",
                     "lower": f", obscuring the {s['side']} hemidiaphragm"}.get(s["lobe"], "")
    if f in ("consolidation", "atelectasis"):
        kw["where"] = _where(s)
    if f == "nodule":
        kw.update(d=s["diameter_mm"], kind="mass" if s["diameter_mm"] >= 30 else "nodule")
    if f == "oedema":
        kw["sev"] = s["severity"]
    kw.update({k.capitalize(): str(v).capitalize() for k, v in list(kw.items()) if isinstance(v, str)})
    kw.setdefault("Kind", kw.get("kind", "").capitalize())
    return t.format(**kw)


def _impression(state: dict) -> str:
    pos = [f for f in FINDINGS if state[f]]
    if not pos:
        return "No acute cardiopulmonary abnormality."
    names = {"cardiomegaly": "cardiomegaly", "effusion": "pleural effusion", "pneumothorax": "pneumothorax",
             "consolidation": "consolidation", "nodule": "pulmonary nodule or mass", "atelectasis": "atelectasis",
             "oedema": "pulmonary oedema"}
    return " ".join(f"{names[f].capitalize()}." for f in pos)


def reports(state: dict, rng: np.random.Generator, k: int = 5) -> list[str]:
    """``k`` reference reports of one state, each with its own phrasing and sentence order."""
    out = []
    for _ in range(k):
        order = list(FINDINGS)
        rng.shuffle(order)
        findings = " ".join(_sentence(f, state[f], rng) for f in order)
        out.append(f"FINDINGS: {findings} IMPRESSION: {_impression(state)}")
    return out


def _sentences(findings_text: str) -> list[str]:
    text = re.sub(r"^\s*findings:\s*", "", findings_text.strip(), flags=re.I)
    return [x.strip() for x in re.split(r"(?<=\.)\s+", text) if x.strip()]


def read_findings(report: str) -> dict:
    """The findings a report states (the rule-based labeller): ``{finding: attributes or None}``."""
    out: dict = {f: None for f in FINDINGS}

    def side_of(s):
        m = re.search(r"\b(bilateral|right|left)\b", s)
        return m.group(1) if m else None

    def grab(pattern, s, conv=str):
        m = re.search(pattern, s)
        return conv(m.group(1)) if m else None

    def lobe_of(s):
        if "lingula" in s:
            return "left", "lingula"
        m = re.search(r"\b(right|left) (upper|middle|lower) lobe", s)
        return (m.group(1), m.group(2)) if m else (side_of(s), None)

    # a generated report may state a finding without an attribute: the finding counts, the attribute is None
    for s in _sentences(report.split("IMPRESSION:")[0].lower()):
        if s.startswith("no ") or "within normal limits" in s or " is normal" in s or s.startswith("there is no"):
            continue
        if "cardiothoracic ratio" in s:
            out["cardiomegaly"] = {"ctr": grab(r"ratio (\d\.\d+)", s, float)}
        elif "pleural effusion" in s or "pleural fluid" in s:
            out["effusion"] = {"side": side_of(s), "size": grab(r"\b(small|moderate|large)\b", s)}
        elif "pneumothorax" in s:
            out["pneumothorax"] = {"side": side_of(s), "size": grab(r"\b(small|large)\b", s)}
        elif "consolidation" in s:
            sd, lb = lobe_of(s)
            out["consolidation"] = {"side": sd, "lobe": lb}
        elif re.search(r"\b(nodule|mass)\b", s):
            out["nodule"] = {"side": side_of(s), "zone": grab(r"\b(upper|mid|lower) zone", s),
                             "diameter_mm": grab(r"(\d+) mm", s, int)}
        elif "atelectasis" in s:
            sd, lb = lobe_of(s)
            out["atelectasis"] = {"side": sd, "lobe": lb}
        elif "oedema" in s:
            out["oedema"] = {"severity": grab(r"\b(mild|moderate|severe)\b", s)}
    return out


def hard_negative(state: dict, report: str, rng: np.random.Generator) -> tuple[str, str]:
    """The same report with one fact changed — the side of one finding, the severity of one, or one finding
    negated / asserted — its impression kept consistent: ``(report, what changed)``."""
    sents = _sentences(report.split("IMPRESSION:")[0])
    flip = lambda x: re.sub(r"\b(right|left)\b", lambda m: {"right": "left", "left": "right"}[m.group(1)], x)  # noqa: E731
    sided = [i for i, x in enumerate(sents) if read_findings(f"{flip(x)} IMPRESSION:") != read_findings(f"{x} IMPRESSION:")]
    graded = [i for i, x in enumerate(sents) if re.search(r"\b(small|large|mild|severe)\b", x)]
    kinds = (["side"] if sided else []) + (["severity"] if graded else []) + ["negation"]
    kind = str(rng.choice(kinds))
    new = dict(state)
    if kind == "side":
        i = int(rng.choice(sided))
        sents[i] = flip(sents[i])
    elif kind == "severity":
        i = int(rng.choice(graded))
        sents[i] = re.sub(r"\b(small|large|mild|severe)\b", lambda m: {"small": "large", "large": "small", "mild": "severe",
                                                                        "severe": "mild"}[m.group(1)], sents[i], count=1)
    else:
        present = [f for f in FINDINGS if state[f] and f != "cardiomegaly"]
        absent = [f for f in FINDINGS if not state[f] and f != "cardiomegaly"]
        if present and (not absent or rng.random() < 0.5):
            f = str(rng.choice(present))
            i = next(j for j, x in enumerate(sents) if read_findings(f"{x} IMPRESSION:")[f])
            sents[i], new[f] = _PHRASES[f][1][0], None
        else:
            f = str(rng.choice(absent))
            fake = {"effusion": {"side": "right", "size": "moderate"}, "pneumothorax": {"side": "left", "size": "small"},
                    "consolidation": {"side": "right", "lobe": "upper"},
                    "nodule": {"side": "left", "zone": "mid", "diameter_mm": 14},
                    "atelectasis": {"side": "left", "lobe": "lower"}, "oedema": {"severity": "moderate"}}[f]
            i = next(j for j, x in enumerate(sents) if x in _PHRASES[f][1])
            sents[i], new[f] = _sentence(f, fake, rng), fake
    return f"FINDINGS: {' '.join(sents)} IMPRESSION: {_impression(new)}", kind


# ------------------------------------------------------------------ the dataset on disk
def _case(job) -> dict:
    i, seed, size, prevalence, n_reports, out = job
    rng = np.random.default_rng([seed, i])
    state = draw_state(rng, prevalence)
    img, _ = render(state, rng, size)
    from medops.data.io import write_png

    case_id = f"cxr{i:05d}"
    write_png(f"{out}/images/{case_id}.png", img)
    reps = reports(state, rng, n_reports)
    neg, kind = hard_negative(state, reps[0], rng)
    return {"case_id": case_id, "patient_id": f"p{i:05d}", "state": state, "reports": reps, "hard_negative": neg,
            "hard_negative_kind": kind, "triage": triage(state)}


def generate(n_cases: int, size: int, seed: int, split, out, *, prevalence: dict | None = None, n_reports: int = 5,
             workers: int = 1, progress: bool = True):
    """Write ``images/<case>.png`` (16-bit PNG, 12-bit values), ``reports.csv`` (case_id, report_idx, report),
    ``hard_negatives.csv``, ``findings.jsonl`` (the hidden states), ``manifest.parquet`` (patient-level split
    stratified by triage class, ``label`` = triage) and ``dataset.json`` under ``out``; returns the manifest."""
    import json
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    import pandas as pd
    from tqdm import tqdm

    from medops.data.splits import apply_split

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, size, prevalence, n_reports, str(out)) for i in range(n_cases)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            cases = list(tqdm(ex.map(_case, jobs, chunksize=8), total=len(jobs), desc="generate cxr-reports",
                              disable=not progress))
    else:
        cases = [_case(j) for j in tqdm(jobs, desc="generate cxr-reports", disable=not progress)]
    man = pd.DataFrame([{"case_id": c["case_id"], "patient_id": c["patient_id"], "modality": "image",
                         "path": f"images/{c['case_id']}.png", "label": c["triage"]} for c in cases])
    man = pd.concat([apply_split(g, split.fractions, split.seed) for _, g in man.groupby("label", sort=True)],
                    ignore_index=True).sort_values("case_id").reset_index(drop=True)
    man.to_parquet(out / "manifest.parquet", index=False)
    pd.DataFrame([{"case_id": c["case_id"], "report_idx": k, "report": r} for c in cases
                  for k, r in enumerate(c["reports"])]).to_csv(out / "reports.csv", index=False)
    pd.DataFrame([{"case_id": c["case_id"], "report": c["hard_negative"], "changed": c["hard_negative_kind"]}
                  for c in cases]).to_csv(out / "hard_negatives.csv", index=False)
    with open(out / "findings.jsonl", "w") as f:
        for c in cases:
            f.write(json.dumps({"case_id": c["case_id"], **c["state"]}) + "\n")
    (out / "dataset.json").write_text(json.dumps({
        "dataset": "cxr-reports", "classes": list(TRIAGE), "modality": "image (PA chest radiograph)", "size": size, "seed": seed,
        "n_cases": n_cases, "reports_per_image": n_reports,
        "triage_counts": man.label.value_counts().to_dict(),
        "finding_counts": {f: sum(bool(c["state"][f]) for c in cases) for f in FINDINGS},
        "source": "simulated: projection radiography physics; reports from the same hidden state"}, indent=2))
    return man


def contact_sheet(root, png, n: int = 8) -> None:
    """Radiographs with their first report (findings present in the impression) and triage class."""
    import textwrap
    from pathlib import Path

    import cv2
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    man = pd.read_parquet(root / "manifest.parquet")
    reps = pd.read_csv(root / "reports.csv")
    picks = pd.concat([g.head(max(1, n // 3)) for _, g in man.groupby("label")]).head(n)
    fig, axes = plt.subplots(2, (len(picks) + 1) // 2, figsize=(3.2 * ((len(picks) + 1) // 2), 8))
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, picks.itertuples()):
        img = cv2.imread(str(root / r.path), cv2.IMREAD_UNCHANGED)
        ax.imshow(img, cmap="gray", vmin=0, vmax=4095)
        text = reps[(reps.case_id == r.case_id) & (reps.report_idx == 0)].report.iloc[0]
        ax.set_title(f"{r.case_id} [{r.label}]\n" + "\n".join(textwrap.wrap(text.split("IMPRESSION:")[1].strip(), 38)),
                     fontsize=7)
    fig.suptitle("cxr-reports: radiographs, impressions and triage class")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
