"""Evaluate a `nodule3d` model on test nodules: paper 004 Table 3 metrics (accuracy, recall, precision,
AUC, F1 at cutoff 0.5) plus specificity, bootstrap 95 % CIs, the sub-models' own scores, ROC and
calibration figures, and per-subgroup results the paper never reports (diameter, texture, calcification)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medops.metrics.classification import bootstrap_ci, classification_metrics

CLASSES = ["benign", "malignant"]
DIAMETER_BINS = [0, 6, 8, 15, np.inf]
DIAMETER_LABELS = ["<6 mm", "6-8 mm", "8-15 mm", ">=15 mm"]


@torch.no_grad()
def per_nodule_table(net, ds, batch_size: int = 16) -> pd.DataFrame:
    """One row per nodule: label, malignant probability, prediction at 0.5, the sub-models' scores."""
    net.eval()
    probs, subs = [], []
    for i in range(0, len(ds), batch_size):
        x = torch.stack([ds[j][0] for j in range(i, min(i + batch_size, len(ds)))])
        probs.append(torch.softmax(net(x).float(), 1)[:, 1])
        if hasattr(net, "forward_all"):
            subs.append(torch.stack([torch.softmax(lg.float(), 1)[:, 1] for lg in net.forward_all(x)], 1))
    p = torch.cat(probs).numpy()
    df = ds.rows[[c for c in ("nodule_id", "case_id", "patient_id", "fold", "diameter_mm", "texture_class", "calcified")
                  if c in ds.rows]].copy()
    df.insert(0, "case_id_", df.pop("nodule_id"))
    df = df.rename(columns={"case_id_": "case_id", "case_id": "scan_id"})
    df["label"] = [CLASSES[i] for i in ds.labels.tolist()]
    df["label_idx"] = ds.labels.numpy()
    df["prob_benign"], df["prob_malignant"] = 1 - p, p
    df["pred_idx"] = (p > 0.5).astype(int)
    if subs:
        s = torch.cat(subs).numpy()
        for k, scale in enumerate(net.scales):
            df[f"prob_malignant_{scale}"] = s[:, k]
    return df


def metrics_of(df: pd.DataFrame) -> dict:
    prob = np.stack([df.prob_benign, df.prob_malignant], 1).astype(np.float32)
    return classification_metrics(torch.from_numpy(prob), torch.from_numpy(np.array(df.label_idx, dtype=np.int64)))


def subgroups(df: pd.DataFrame) -> pd.DataFrame:
    """Metrics per diameter bin, texture class and calcification (n, positives, accuracy, recall, AUC)."""
    rows = []
    groups = {}
    if "diameter_mm" in df:
        groups["diameter"] = pd.cut(df.diameter_mm, DIAMETER_BINS, labels=DIAMETER_LABELS, right=False)
    if "texture_class" in df:
        groups["texture"] = df.texture_class
    if "calcified" in df:
        groups["calcification"] = df.calcified.map({True: "calcified", False: "not calcified"})
    for name, key in groups.items():
        for level, g in df.groupby(key, observed=True, sort=True):
            m = metrics_of(g)
            rows.append({"subgroup": name, "level": str(level), "n": len(g), "malignant": int(g.label_idx.sum()),
                         "accuracy": m["accuracy"], "recall": m["recall"], "specificity": m["specificity"],
                         "auc": m["auc"]})
    return pd.DataFrame(rows)


def calibration_figure(df: pd.DataFrame, path: Path, bins: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, y = df.prob_malignant.to_numpy(), df.label_idx.to_numpy()
    edges = np.linspace(0, 1, bins + 1)
    k = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    mp = [p[k == b].mean() for b in range(bins) if (k == b).any()]
    fy = [y[k == b].mean() for b in range(bins) if (k == b).any()]
    n = [(k == b).sum() for b in range(bins) if (k == b).any()]
    fig, ax = plt.subplots(figsize=(3.4, 3.2))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.scatter(mp, fy, s=[8 + 2 * v for v in n])
    ax.plot(mp, fy)
    ax.set_xlabel("predicted probability (malignant)")
    ax.set_ylabel("observed share malignant")
    ax.set_title(f"calibration (Brier {np.mean((p - y) ** 2):.3f})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def evaluate_nodules(net, ds, out: Path, *, history_csv: Path | None = None, n_boot: int = 1000) -> dict:
    from medops.evaluation.classification import confusion_figure, roc_figure
    from medops.evaluation.figures import loss_curves

    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    df = per_nodule_table(net, ds)
    df.to_csv(out / "per_case.csv", index=False)
    m = metrics_of(df)
    prob = np.stack([df.prob_benign, df.prob_malignant], 1).astype(np.float32)
    ci = bootstrap_ci(prob, df.label_idx.to_numpy(), n_boot=n_boot) if n_boot else {}
    sub = subgroups(df)
    sub.to_csv(out / "subgroups.csv", index=False)
    subs = {c.rsplit("_", 1)[1]: metrics_of(df.assign(prob_malignant=df[c], prob_benign=1 - df[c]))["auc"]
            for c in df.columns if c.startswith("prob_malignant_")}
    weights = dict(zip(map(str, net.scales), map(float, net.weights))) if hasattr(net, "weights") else None
    metrics = {"n_test_cases": int(len(df)), "classes": CLASSES, "class_counts": df.label.value_counts().to_dict(),
               "model": m, "ci95": ci, "submodel_auc": subs, "ensemble_weights": weights,
               "subgroups": sub.to_dict("records"),
               "baseline": {"name": "majority class", "accuracy": float(df.label_idx.value_counts(normalize=True).max()),
                            "auc": 0.5, "recall": 0.0}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    confusion_figure(df, CLASSES, out / "figures" / "confusion.png")
    if df.label_idx.nunique() == 2:
        roc_figure(df, CLASSES, out / "figures" / "roc.png")
    calibration_figure(df, out / "figures" / "calibration.png")
    if history_csv is not None and Path(history_csv).exists():
        loss_curves(pd.read_csv(history_csv), out / "figures" / "loss_curves.png")
    return metrics
