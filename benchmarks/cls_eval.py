"""A transfer_cls cell's test evaluation (``per_case_table``: probabilities, Grad-CAM, localisation scores) on
the profile's test set, Grad-CAM over every test case (as before 2026-12-01) vs only where it is used (the
cases with a lesion mask and the figure's cases), in one run; the maps both give for those cases are compared.

    python benchmarks/cls_eval.py quick [dataset] [backbone]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import ROOT, save
from medops.config import load_config
from medops.data import rare_disease
from medops.data.dataset import ClassificationDataset
from medops.evaluation.classification import per_case_table, predict_proba
from medops.explain import gradcam
from medops.models import get_model
from medops.preprocess.classification_2d import preprocess_classification


def main(profile: str = "quick", dataset: str = "gaucher-ct", backbone: str = "densenet201") -> dict:
    cfg = load_config(ROOT / "params.yaml", profile=profile)
    rd, pcfg = cfg.section("rare_disease"), cfg.section("preprocess_cls")
    spec = rd.datasets[dataset]
    tmp = Path(tempfile.mkdtemp(prefix="medops-bench-"))
    rare_disease.generate(dataset, int(spec["n_cases"]), float(spec.get("prevalence", 0.5)), rd.size, rd.seed,
                          cfg.split, tmp / "raw", progress=False, test_cases=int(spec.get("test_cases", 0)))
    idx = preprocess_classification(tmp / "raw", tmp / "pre", pcfg, split_fractions=cfg.split.fractions,
                                    split_seed=cfg.split.seed, progress=False)
    size = pcfg.image_size
    classes = sorted(idx.label.unique())
    classes = [c for c in rare_disease.DATASETS[dataset]["classes"] if c in classes]
    torch.manual_seed(0)
    net = get_model("transfer_cls", backbone=backbone, num_classes=len(classes), weights="none").eval()
    n_fig = cfg.family("transfer_cls").evaluate.gradcam_figure_cases
    ds = ClassificationDataset(tmp / "pre", idx, "test")
    predict_proba(net, ds)                                      # warm-up

    t0 = time.perf_counter()
    predict_proba(net, ds)
    full = gradcam(net, ds.images, class_idx=1 if len(classes) == 2 else None)
    t_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, cams, _ = per_case_table(net, tmp / "pre", idx, classes, n_figure_cases=n_fig)
    t_used = time.perf_counter() - t0
    done = ~np.isnan(cams).all(axis=tuple(range(1, cams.ndim)))
    res = {"profile": profile, "dataset": dataset, "backbone": backbone, "image_size": size,
           "test_cases": len(ds), "maps_computed": int(done.sum()), "threads": torch.get_num_threads(),
           "grad_cam_every_case_s": round(t_all, 1), "grad_cam_where_used_s": round(t_used, 1),
           "speedup": round(t_all / t_used, 2),
           "max_abs_map_difference": float(np.abs(cams[done] - full[done]).max())}
    print(res, flush=True)
    save(f"cls_eval_{profile}_{dataset}_{backbone}", res)
    return res


if __name__ == "__main__":
    main(*sys.argv[1:])
