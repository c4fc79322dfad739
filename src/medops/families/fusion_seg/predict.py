"""`medops predict` for fusion_seg: validated case folders -> the training preprocessing -> masks (PNG) + JSON."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medops.config import ValidateConfig
from medops.data.breast_trimodal import MODALITIES as IMAGE_MODALITIES
from medops.data.io import read_image, resolve_inside, write_png
from medops.errors import DataError
from medops.layout import file_in

SUFFIXES = (".png", ".dcm", ".nii.gz", ".nii")


def _case_folder_manifest(folder: Path) -> pd.DataFrame:
    rows = []
    for mod in (*IMAGE_MODALITIES, "mask"):
        hits = [p for s in SUFFIXES for p in [folder / f"{mod}{s}"] if p.exists()]
        if hits:
            rows.append({"case_id": folder.name, "patient_id": folder.name, "modality": mod,
                         "path": hits[0].name, "split": "test"})
    if not rows:
        raise DataError(str(folder), "predict_input: no us/mg/mri image found",
                        "put us.png, mg.png and mri.png (or .dcm / .nii.gz) in the case folder")
    return pd.DataFrame(rows)


def load_inputs(inp: Path) -> tuple[Path, pd.DataFrame]:
    """Return (data root, manifest) for a case folder or a manifest.parquet."""
    if inp.is_file() and inp.suffix == ".parquet":
        return inp.parent, pd.read_parquet(inp)
    if inp.is_dir() and (inp / "manifest.parquet").exists():
        return inp, pd.read_parquet(inp / "manifest.parquet")
    if inp.is_dir():
        return inp, _case_folder_manifest(inp)
    raise DataError(str(inp), "predict_input: not a case folder or manifest", "pass a folder or a manifest.parquet")




def predict(ref, inp: Path, out: Path, vcfg: ValidateConfig, default_pre,
            threshold: float = 0.5) -> list[dict]:
    """Validate the input (refusing it with the reasons), preprocess it exactly as the model's
    training run (``ref``, a resolved :class:`medops.tracking.ModelRef`) did, and write
    ``<case>_mask.png`` + ``<case>.json`` per case under ``out``."""
    import dataclasses

    import torch

    from medops.config import from_logged_params
    from medops.preprocess.breast_trimodal import preprocess_case
    from medops.validation import validate_dataset
    from medops.validation.gate import FIXED_GEOMETRY

    root, man = load_inputs(inp)
    validate_dataset(root, vcfg, out / "validation", progress=False, manifest=man, replace_docs=False,
                     spec=dataclasses.replace(FIXED_GEOMETRY, required=IMAGE_MODALITIES))
    pcfg = from_logged_params(ref.params, default_pre, "preprocess")
    model = ref.load()  # exported in eval mode
    model_uri, version = ref.uri, ref.version
    results = []
    for case_id, g in man.groupby("case_id", sort=True):
        paths = {r.modality: resolve_inside(root, r.path) for r in g.itertuples()}
        images = {m: read_image(paths[m]) for m in IMAGE_MODALITIES}
        stack, _, reg = preprocess_case(images, None, pcfg)
        with torch.no_grad():
            prob = model(torch.from_numpy(stack[None]).float())[0, 0].numpy()
        mask = prob >= threshold
        h, w = images["us"].shape
        mask_native = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) >= threshold
        write_png(file_in(out, case_id, "_mask.png"), mask_native.astype(np.uint8) * 255)
        summary = {"case_id": case_id, "model_uri": model_uri, "model_version": version, "run_id": ref.run_id,
                   "threshold": threshold, "image_size": pcfg.image_size, "mask_png": f"{case_id}_mask.png",
                   "tumour_fraction": float(mask.mean()), "tumour_area_px_us_frame": int(mask_native.sum()),
                   "max_probability": float(prob.max()),
                   "mean_probability_in_mask": float(prob[mask].mean()) if mask.any() else None,
                   "mri_registration": {"angle_rad": reg[0], "tx_px": reg[1], "ty_px": reg[2]},
                   "validation": "passed"}
        file_in(out, case_id, ".json").write_text(json.dumps(summary, indent=2))
        results.append(summary)
    return results




