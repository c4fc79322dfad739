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


def preprocess_config_of(run_params: dict, default, section: str = "preprocess"):
    """The preprocessing the model was trained with (``default``'s dataclass, read from the run's logged
    ``<section>.<field>`` parameters; fields not logged keep ``default``'s value)."""
    kw = {}
    for f in fields(default):
        v = run_params.get(f"{section}.{f.name}")
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


def task_of(model_uri: str) -> str:
    """``classification`` or ``segmentation``, from the family named in a ``models:/<family>...`` URI
    (any other URI is treated as a segmentation model)."""
    if model_uri.startswith("models:/"):
        name = model_uri.split("models:/", 1)[1].replace("@", "/").split("/", 1)[0]
        from medops.families import list_families

        if name in list_families():
            from medops.families import get_family

            return get_family(name).task_type
    return "segmentation"


CLS_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")


def _cls_inputs(inp: Path) -> list[Path]:
    if inp.is_file():
        return [inp]
    if inp.is_dir():
        files = sorted(p for p in inp.iterdir() if p.is_file() and p.name.lower().endswith(CLS_SUFFIXES))
        if files:
            return files
    raise DataError(str(inp), "predict_input: no image found",
                    f"pass an image or a folder of images ({', '.join(CLS_SUFFIXES)})")


def predict_classification(model_uri: str, inp: Path, out: Path, default_pre) -> list[dict]:
    """Class probabilities (the registered model) and a Grad-CAM heatmap (the same weights rebuilt by
    name from the run's checkpoint) per image; the preprocessing of the model's training run.
    Every input is read and checked before anything is predicted or written."""
    import mlflow
    import torch

    from medops.config import ClsModelConfig
    from medops.data.io import read_image
    from medops.explain import gradcam
    from medops.preprocess.classification import preprocess_image
    from medops.tracking import registry
    from medops.tracking.mlflow_run import _mlflow

    _mlflow()
    files = _cls_inputs(inp)
    stacks = []
    for f in files:  # refuse the whole batch on the first bad file: nothing half-written
        arr = read_image(f, color=True).astype(np.float32)
        if min(arr.shape[:2]) < 32:
            raise DataError(str(f), f"min_size: image is {arr.shape[1]}x{arr.shape[0]}", "use images of at least 32x32 pixels")
        stacks.append(arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None])
    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception as exc:
        raise DataError(model_uri, f"model_exists: cannot resolve the model ({exc})",
                        "check the name/alias (e.g. models:/transfer_cls@champion) and MLFLOW_TRACKING_URI") from exc
    run = mlflow.get_run(info.run_id)
    params, tags = run.data.params, run.data.tags
    classes = json.loads(tags.get("classes", "[]"))
    pcfg = preprocess_config_of(params, default_pre, "preprocess_cls")
    model = mlflow.pytorch.load_model(model_uri)
    from medops.stages import build_model

    mcfg = ClsModelConfig(backbone=params["resolved_model.backbone"], strategy=params["resolved_model.strategy"],
                          weights="none", dropout=float(params["resolved_model.dropout"]))
    net = build_model(mcfg, num_classes=len(classes))
    ck = registry.download(info.run_id, "checkpoint/best.pt", out / ".checkpoint")
    net.load_state_dict(torch.load(ck, map_location="cpu", weights_only=True)["model"])
    version = _version(model_uri)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for f, stack in zip(files, stacks):
        img, _, converted = preprocess_image(stack, None, pcfg)
        x = torch.from_numpy(img[None])
        with torch.no_grad():
            prob = model(x)[0].numpy()
        cam = gradcam(net, x, class_idx=1 if len(classes) == 2 else int(prob.argmax()))[0]
        case = f.name.split(".")[0]
        heat = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
        base = cv2.cvtColor((img.transpose(1, 2, 0) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        write_png(out / f"{case}_gradcam.png", cv2.addWeighted(base, 0.55, heat, 0.45, 0))
        np.save(out / f"{case}_gradcam.npy", cam.astype(np.float32))
        summary = {"case_id": case, "input": str(f), "model_uri": model_uri, "model_version": version,
                   "run_id": info.run_id, "classes": classes,
                   "probabilities": {c: float(p) for c, p in zip(classes, prob)},
                   "predicted": classes[int(prob.argmax())], "image_size": pcfg.image_size,
                   "converted_gray_to_rgb": bool(converted), "gradcam_png": f"{case}_gradcam.png",
                   "gradcam_layer": net.gradcam_layer}
        (out / f"{case}.json").write_text(json.dumps(summary, indent=2))
        results.append(summary)
    return results
