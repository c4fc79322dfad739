"""`medops predict` for transfer_cls: images -> class probabilities and a Grad-CAM heatmap per image,
from the registered model (rebuilt by name from its safetensors after a digest check)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from medops.data.io import write_png
from medops.errors import DataError
from medops.layout import file_in

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


def predict_classification(ref, inp: Path, out: Path, default_pre) -> list[dict]:
    """Class probabilities and a Grad-CAM heatmap of the registered model per image; the preprocessing of
    the model's training run.
    Every input is read and checked before anything is predicted or written."""
    import torch

    from medops.config import from_logged_params
    from medops.explain import gradcam
    from medops.preprocess.classification_2d import preprocess_image, read_stacks

    files = _cls_inputs(inp)
    stacks = read_stacks(files)  # refuse the whole batch on the first bad file: nothing half-written
    params, tags = ref.params, ref.tags
    classes = json.loads(tags.get("classes", "[]"))
    pcfg = from_logged_params(params, default_pre, "preprocess_cls")
    model = ref.load()
    net = model[0]  # the classifier itself, for Grad-CAM
    model_uri, version = ref.uri, ref.version
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
        write_png(file_in(out, case, "_gradcam.png", "image name"), cv2.addWeighted(base, 0.55, heat, 0.45, 0))
        np.save(file_in(out, case, "_gradcam.npy", "image name"), cam.astype(np.float32))
        summary = {"case_id": case, "input": str(f), "model_uri": model_uri, "model_version": version,
                   "run_id": ref.run_id, "classes": classes,
                   "probabilities": {c: float(p) for c, p in zip(classes, prob)},
                   "predicted": classes[int(prob.argmax())], "image_size": pcfg.image_size,
                   "converted_gray_to_rgb": bool(converted), "gradcam_png": f"{case}_gradcam.png",
                   "gradcam_layer": net.gradcam_layer}
        file_in(out, case, ".json", "image name").write_text(json.dumps(summary, indent=2))
        results.append(summary)
    return results
