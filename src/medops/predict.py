"""`medops predict`: validated input -> the training preprocessing -> masks (PNG) + JSON summaries."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medops.config import MODALITIES as IMAGE_MODALITIES
from medops.config import PreprocessConfig, ValidateConfig
from medops.data.io import read_image, resolve_inside, write_png
from medops.errors import DataError

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


def preprocess_config_of(run_params: dict, default: PreprocessConfig) -> PreprocessConfig:
    """The preprocessing the model was trained with, from its run's logged parameters."""
    kw = {}
    for f in fields(PreprocessConfig):
        v = run_params.get(f"preprocess.{f.name}")
        if v is None:
            continue
        cur = getattr(default, f.name)
        kw[f.name] = tuple(int(x) for x in v.strip("()[]").split(",") if x.strip()) if isinstance(cur, tuple) \
            else type(cur)(v)
    return replace(default, **kw)


def predict(model_uri: str, inp: Path, out: Path, vcfg: ValidateConfig, default_pre: PreprocessConfig,
            threshold: float = 0.5) -> list[dict]:
    """Validate the input (refusing it with the reasons), preprocess it exactly as the model's
    training run did, and write ``<case>_mask.png`` + ``<case>.json`` per case under ``out``."""
    import mlflow
    import torch

    from medops.preprocess.pipeline import preprocess_case
    from medops.tracking.mlflow_run import _mlflow
    from medops.validation import validate_dataset

    _mlflow()
    root, man = load_inputs(inp)
    validate_dataset(root, vcfg, out / "validation", progress=False, required=IMAGE_MODALITIES, manifest=man)
    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception as exc:
        raise DataError(model_uri, f"model_exists: cannot resolve the model ({exc})",
                        "check the name/alias (e.g. models:/fusion_seg@champion) and MLFLOW_TRACKING_URI") from exc
    pcfg = preprocess_config_of(mlflow.get_run(info.run_id).data.params, default_pre)
    model = mlflow.pytorch.load_model(model_uri)  # exported in eval mode
    version = _version(model_uri)
    results = []
    for case_id, g in man.groupby("case_id", sort=True):
        paths = {r.modality: resolve_inside(root, r.path) for r in g.itertuples()}
        images = {m: read_image(paths[m]) for m in IMAGE_MODALITIES}
        stack, _, reg = preprocess_case(images, None, pcfg)
        with torch.no_grad():
            prob = model(torch.from_numpy(stack[None]).float())[0, 0].numpy()
        mask = prob >= threshold
        ref = images["us"].shape
        mask_native = cv2.resize(prob, (ref[1], ref[0]), interpolation=cv2.INTER_LINEAR) >= threshold
        write_png(out / f"{case_id}_mask.png", mask_native.astype(np.uint8) * 255)
        summary = {"case_id": case_id, "model_uri": model_uri, "model_version": version, "run_id": info.run_id,
                   "threshold": threshold, "image_size": pcfg.image_size, "mask_png": f"{case_id}_mask.png",
                   "tumour_fraction": float(mask.mean()), "tumour_area_px_us_frame": int(mask_native.sum()),
                   "max_probability": float(prob.max()),
                   "mean_probability_in_mask": float(prob[mask].mean()) if mask.any() else None,
                   "mri_registration": {"angle_rad": reg[0], "tx_px": reg[1], "ty_px": reg[2]},
                   "validation": "passed"}
        (out / f"{case_id}.json").write_text(json.dumps(summary, indent=2))
        results.append(summary)
    return results


def _version(model_uri: str) -> str | None:
    if "@" in model_uri or model_uri.count("/") >= 2:
        try:
            from mlflow.tracking import MlflowClient

            name, ref = model_uri.split("models:/", 1)[1].replace("@", "/").split("/", 1)
            c = MlflowClient()
            return str(c.get_model_version_by_alias(name, ref).version) if "@" in model_uri else ref
        except Exception:
            return None
    return None
