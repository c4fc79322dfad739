"""`medops predict nodule3d`: a DICOM CT series plus nodule centres -> a malignancy probability per nodule
(with each sub-model's score for an ensemble) and 3-D Grad-CAM slices, from the registered model (rebuilt
by name from its safetensors after a digest check; nothing is unpickled).

Input: a case folder holding the series (its files directly, or in ``series/``) and the centres, either
``nodules.csv`` (``x_mm, y_mm, z_mm`` in patient coordinates, optional ``nodule_id``) or an
``annotation.json`` as ``medops generate lidc-sim`` writes it. Everything is read and checked before
anything is predicted or written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medops.errors import DataError
from medops.layout import file_in, safe_id


def _centres(inp: Path) -> pd.DataFrame:
    if (inp / "nodules.csv").exists():
        df = pd.read_csv(inp / "nodules.csv", dtype={"nodule_id": str})
        src = inp / "nodules.csv"
    elif (inp / "annotation.json").exists():
        ann = json.loads((inp / "annotation.json").read_text())
        df = pd.DataFrame([{k: n[k] for k in ("nodule_id", "x_mm", "y_mm", "z_mm")} for n in ann.get("nodules", [])])
        src = inp / "annotation.json"
    else:
        raise DataError(str(inp), "predict_input: no nodule centres",
                        "put nodules.csv (x_mm, y_mm, z_mm in patient coordinates) or annotation.json in the case folder")
    missing = [c for c in ("x_mm", "y_mm", "z_mm") if c not in df.columns]
    if missing or df.empty:
        raise DataError(str(src), f"nodules_columns: {'no rows' if df.empty else f'missing {missing}'}",
                        "one row per nodule with x_mm, y_mm, z_mm")
    if "nodule_id" not in df:
        df["nodule_id"] = [f"n{i}" for i in range(len(df))]
    for nid in df.nodule_id:
        safe_id(str(nid), "nodule id")
    return df


def _overlay(cube: np.ndarray, cam: np.ndarray, path: Path, title: str) -> None:
    """Axial, coronal and sagittal mid-slices of the cube with the Grad-CAM map over them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [s // 2 for s in cube.shape]
    views = [(cube[c[0]], cam[c[0]], "axial"), (cube[:, c[1]], cam[:, c[1]], "coronal"),
             (cube[:, :, c[2]], cam[:, :, c[2]], "sagittal")]
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    for ax, (img, heat, name) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def predict_nodules(ref, inp: Path, out: Path, default_pre) -> list[dict]:
    import torch

    from medops.config import from_logged_params
    from medops.data.dicom_series import read_series
    from medops.explain import gradcam
    from medops.preprocess.nodule_patches import extract_patch, window

    inp = Path(inp)
    if not inp.is_dir():
        raise DataError(str(inp), "predict_input: not a folder", "pass a case folder: its DICOM series + nodules.csv")
    series = inp / "series" if (inp / "series").is_dir() else inp
    centres = _centres(inp)
    vol = read_series(series)                                   # every series rule, before anything is written
    for r in centres.itertuples():
        if not vol.contains((r.x_mm, r.y_mm, r.z_mm)):
            raise DataError(f"{inp} nodule {r.nodule_id}", f"centre_inside_volume: ({r.x_mm}, {r.y_mm}, {r.z_mm}) mm "
                            f"is outside the series (x, y, z extent {vol.extent_mm()} mm)", "give the centre in this series' patient coordinates (mm)")
    pcfg = from_logged_params(ref.params, default_pre, "preprocess_nodule")
    model = ref.load()
    net = model[0]
    out.mkdir(parents=True, exist_ok=True)
    case = safe_id(inp.name, "case folder name")
    results = []
    for r in centres.itertuples():
        patch, pad = extract_patch(vol, (r.x_mm, r.y_mm, r.z_mm), pcfg.cube, pcfg.spacing_mm)
        x = torch.from_numpy(window(patch, pcfg.hu_min, pcfg.hu_max)[None, None])
        with torch.no_grad():
            prob = model(x)[0].numpy()
            subs = ({str(s): float(torch.softmax(lg.float(), 1)[0, 1]) for s, lg in zip(net.scales, net.forward_all(x))}
                    if hasattr(net, "forward_all") else {})
        cam = gradcam(net, x, class_idx=1)[0]
        name = str(r.nodule_id) if str(r.nodule_id).startswith(case) else f"{case}_{r.nodule_id}"
        np.save(file_in(out, name, "_gradcam.npy", "nodule id"), cam.astype(np.float32))
        _overlay(x[0, 0].numpy(), cam, file_in(out, name, "_gradcam.png", "nodule id"),
                 f"{name}: p(malignant) = {prob[1]:.2f}")
        summary = {"case_id": name, "series": str(series), "nodule_id": str(r.nodule_id),
                   "centre_mm": [float(r.x_mm), float(r.y_mm), float(r.z_mm)], "model_uri": ref.uri,
                   "model_version": ref.version, "run_id": ref.run_id,
                   "probabilities": {"benign": float(prob[0]), "malignant": float(prob[1])},
                   "predicted": "malignant" if prob[1] > 0.5 else "benign", "submodel_malignant": subs,
                   "padded_fraction": pad, "cube": pcfg.cube, "spacing_mm": pcfg.spacing_mm,
                   "gradcam_png": f"{name}_gradcam.png", "gradcam_layer": net.gradcam_layer}
        file_in(out, name, ".json", "nodule id").write_text(json.dumps(summary, indent=2))
        results.append(summary)
    return results
