"""Evaluate a segmentation model on the test split (paper 000, Table 5 metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from medops.data.breast_trimodal import MODALITIES as IMAGE_MODALITIES
from medops.data.dataset import SegmentationShardDataset
from medops.data.io import write_png
from medops.layout import file_in
from medops.families.fusion_seg.baseline import POLARITY, otsu_segment
from medops.evaluation.figures import loss_curves, overlay_grid
from medops.metrics import SEG_METRICS, segmentation_metrics



@torch.no_grad()
def predict(net, ds: SegmentationShardDataset, batch_size: int = 16, threshold: float = 0.5, device="cpu"):
    net.eval().to(device)
    preds = []
    for x, _, _ in DataLoader(ds, batch_size=batch_size):
        preds.append((torch.sigmoid(net(x.to(device))) >= threshold).to(torch.uint8).cpu())
    return torch.cat(preds)


def _summary(df: pd.DataFrame) -> dict:
    return {k: float(df[k].mean()) for k in SEG_METRICS}


def evaluate_segmentation(net, pre_dir: Path, index: pd.DataFrame, out: Path, *, history_csv: Path | None,
                          modalities: tuple[str, ...], threshold: float = 0.5) -> dict:
    """Write per-case CSV, predicted masks, figures and metrics.json under ``out``.

    Layout::

        out/metrics.json          aggregated test metrics, model and baseline (DVC metrics)
        out/per_case.csv          one row per test case and method
        out/predictions/<case>.png predicted masks (0/255)
        out/figures/loss_curves.png, out/figures/overlays.png
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    ds = SegmentationShardDataset(pre_dir, index, "test")
    pred = predict(net, ds, threshold=threshold)
    truth = ds.masks
    m = segmentation_metrics(pred, truth)
    per_case = pd.DataFrame({"case_id": ds.case_ids, "method": "fusion_seg", **{k: v.numpy() for k, v in m.items()}})
    for i, cid in enumerate(ds.case_ids):
        write_png(file_in(out / "predictions", cid, ".png"), pred[i, 0].numpy() * 255)
    # classical baseline on the same preprocessed images
    base_frames = []
    for j, mod in enumerate(IMAGE_MODALITIES):
        seg = torch.from_numpy(np.stack([otsu_segment(ds.images[i, j].float().numpy(), POLARITY[mod])
                                         for i in range(len(ds))]))[:, None]
        bm = segmentation_metrics(seg, truth)
        base_frames.append(pd.DataFrame({"case_id": ds.case_ids, "method": f"otsu_{mod}",
                                         **{k: v.numpy() for k, v in bm.items()}}))
    per_case = pd.concat([per_case, *base_frames], ignore_index=True)
    per_case.to_csv(out / "per_case.csv", index=False)
    summary = {meth: _summary(g) for meth, g in per_case.groupby("method")}
    baselines = {k: v for k, v in summary.items() if k.startswith("otsu_")}
    best_base = max(baselines, key=lambda k: baselines[k]["dsc"])
    metrics = {"n_test_cases": len(ds), "model": summary["fusion_seg"], "baseline_best": best_base,
               "baseline": baselines[best_base], "baselines": baselines,
               "model_beats_baseline": summary["fusion_seg"]["dsc"] > baselines[best_base]["dsc"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # figures
    if history_csv is not None and history_csv.exists():
        loss_curves(pd.read_csv(history_csv), out / "figures" / "loss_curves.png")
    model_rows = per_case[per_case.method == "fusion_seg"].reset_index(drop=True)
    order = model_rows.dsc.fillna(0).argsort().to_numpy()
    picks = [("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])]
    rows = [{"label": lab, "case_id": ds.case_ids[i], "dsc": float(model_rows.dsc[i]),
             "image": ds.images[i].float().numpy(), "truth": truth[i, 0].numpy(), "pred": pred[i, 0].numpy()}
            for lab, i in picks]
    overlay_grid(rows, list(IMAGE_MODALITIES), out / "figures" / "overlays.png")
    return metrics


def format_table(metrics: dict) -> str:
    lines = [f"{'method':<22}{'DSC':>8}{'IoU':>8}{'Sens':>8}{'Spec':>8}"]
    rows = [("fusion_seg (model)", metrics["model"])] + [(k, v) for k, v in metrics["baselines"].items()]
    for name, v in rows:
        lines.append(f"{name:<22}{v['dsc']:>8.3f}{v['iou']:>8.3f}{v['sensitivity']:>8.3f}{v['specificity']:>8.3f}")
    return "\n".join(lines)


def evaluate_conditions(net, pre_dir: Path, index: pd.DataFrame, out: Path, *, modalities: tuple[str, ...],
                        threshold: float = 0.5) -> dict:
    """Test-split metrics per case for the full input and, for multi-modal models, with each
    modality removed (its channel zeroed) at test time. Writes ``out/per_case.csv``."""
    ds = SegmentationShardDataset(pre_dir, index, "test")
    conditions = {"full": None}
    if len(modalities) > 1:
        conditions.update({f"minus_{m}": IMAGE_MODALITIES.index(m) for m in modalities})
    frames, summary = [], {}
    images = ds.images
    for name, drop in conditions.items():
        if drop is not None:
            ds.images = images.clone()
            ds.images[:, drop] = 0
        pred = predict(net, ds, threshold=threshold)
        ds.images = images
        m = segmentation_metrics(pred, ds.masks)
        df = pd.DataFrame({"case_id": ds.case_ids, "condition": name, **{k: v.numpy() for k, v in m.items()}})
        frames.append(df)
        summary[name] = _summary(df)
    pd.concat(frames, ignore_index=True).to_csv(out / "per_case.csv", index=False)
    return summary
