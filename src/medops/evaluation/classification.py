"""Evaluate a classifier on the test split: paper 002 Table 1 metrics with bootstrap CIs,
confusion matrix, ROC curve, Grad-CAM overlays and localisation scores per case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from medops.data.dataset import ClassificationDataset
from medops.explain import gradcam, localisation_scores
from medops.metrics.classification import CLS_METRICS, bootstrap_ci, classification_metrics

LOC_METRICS = ("energy_in_mask", "pointing_hit", "mask_fraction")


@torch.no_grad()
def predict_proba(net, ds, batch_size: int = 32, device="cpu") -> np.ndarray:
    net.eval().to(device)
    out = [torch.softmax(net(x.to(device)).float(), 1).cpu() for x, _, _ in DataLoader(ds, batch_size=batch_size)]
    return torch.cat(out).numpy()


def figure_cases(labels, n_classes: int, n: int) -> list[int]:
    """The cases a Grad-CAM figure shows: the first ``n`` disease cases (binary; any case for more classes),
    else the first ``n`` cases."""
    labels = np.asarray(labels)
    pos = [i for i in range(len(labels)) if n_classes != 2 or labels[i] == 1]
    return pos[:n] or list(range(min(n, len(labels))))


def per_case_table(net, pre_dir: Path, index: pd.DataFrame, classes: list[str], split: str = "test",
                   n_figure_cases: int = 6) -> tuple[pd.DataFrame, np.ndarray, ClassificationDataset]:
    """One row per case: label, class probabilities, prediction and Grad-CAM localisation (cases with a mask).

    Grad-CAM (a forward and a backward pass per case) is computed only where it is used: the cases with a
    lesion mask (localisation scores) and the ``n_figure_cases`` the figure shows; the other rows of the
    returned maps are NaN. On a test set of 222 radiographs with 39 masks that is ~5x fewer backward passes."""
    ds = ClassificationDataset(pre_dir, index, split)
    prob = predict_proba(net, ds)
    positive = 1 if len(classes) == 2 else None
    labels = ds.labels.numpy()
    need = sorted(set(np.flatnonzero(ds.has_mask.numpy()).tolist()) |
                  set(figure_cases(labels, len(classes), n_figure_cases)))
    cams = np.full((len(ds), *ds.images.shape[-2:]), np.nan, np.float32)
    if need:
        cams[need] = gradcam(net, ds.images[need], class_idx=positive)
    df = pd.DataFrame({"case_id": ds.case_ids, "label": [classes[i] for i in labels.tolist()],
                       "label_idx": labels, "pred_idx": prob.argmax(1),
                       **{f"prob_{c}": prob[:, j] for j, c in enumerate(classes)}})
    loc = [localisation_scores(cams[i], ds.masks[i].numpy()) if bool(ds.has_mask[i]) else
           {k: np.nan for k in LOC_METRICS} for i in range(len(ds))]
    df = pd.concat([df, pd.DataFrame(loc)], axis=1)
    return df, cams, ds


def summarise(df: pd.DataFrame, classes: list[str], n_boot: int = 1000) -> dict:
    prob = np.array(df[[f"prob_{c}" for c in classes]].to_numpy(), dtype=np.float32)
    y = np.array(df.label_idx.to_numpy(), dtype=np.int64)
    m = classification_metrics(torch.from_numpy(prob), torch.from_numpy(y))
    ci = bootstrap_ci(prob, y, n_boot=n_boot)
    pos = df[df.label_idx == 1] if len(classes) == 2 else df
    for k in LOC_METRICS:
        m[k] = float(pos[k].mean()) if pos[k].notna().any() else float("nan")
    return {"model": m, "ci95": ci}


def evaluate_classification(net, pre_dir: Path, index: pd.DataFrame, out: Path, *, classes: list[str],
                            history_csv: Path | None = None, n_boot: int = 1000, n_figure_cases: int = 6,
                            backbone: str = "") -> dict:
    """Write ``per_case.csv``, ``metrics.json`` and figures (ROC, confusion, Grad-CAM, loss) under ``out``."""
    from medops.evaluation.figures import loss_curves

    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    df, cams, ds = per_case_table(net, pre_dir, index, classes, n_figure_cases=n_figure_cases)
    df.to_csv(out / "per_case.csv", index=False)
    s = summarise(df, classes, n_boot)
    prevalence = float((df.label_idx == 1).mean()) if len(classes) == 2 else float("nan")
    metrics = {"n_test_cases": int(len(df)), "classes": classes, "class_counts": df.label.value_counts().to_dict(),
               **s, "baseline": {"name": "majority class", "accuracy": float(df.label_idx.value_counts(normalize=True).max()),
                                 "auc": 0.5, "recall": 0.0, "prevalence": prevalence}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    confusion_figure(df, classes, out / "figures" / "confusion.png")
    if len(classes) == 2:
        roc_figure(df, classes, out / "figures" / "roc.png")
    gradcam_figure(df, cams, ds, classes, out / "figures" / "gradcam.png", n_figure_cases, backbone)
    if history_csv is not None and Path(history_csv).exists():
        loss_curves(pd.read_csv(history_csv), out / "figures" / "loss_curves.png")
    return metrics


def confusion_figure(df: pd.DataFrame, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.zeros((len(classes), len(classes)), int)
    for t, p in zip(df.label_idx, df.pred_idx):
        cm[t, p] += 1
    fig, ax = plt.subplots(figsize=(3.2, 3))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=10)
    ax.set_xticks(range(len(classes)), classes, rotation=20, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def roc_figure(df: pd.DataFrame, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torchmetrics.functional.classification as tmc

    p = torch.tensor(df[f"prob_{classes[1]}"].to_numpy())
    t = torch.tensor((df.label_idx == 1).to_numpy().astype(np.int64))
    fpr, tpr, _ = tmc.binary_roc(p, t)
    auc = float(tmc.binary_auroc(p, t))
    fig, ax = plt.subplots(figsize=(3.4, 3.2))
    ax.plot(fpr.numpy(), tpr.numpy(), label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC: {classes[1]} vs {classes[0]}", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def gradcam_figure(df, cams, ds, classes, path: Path, n: int = 6, title: str = "") -> None:
    """Image | Grad-CAM overlay (lesion outline in yellow) for up to ``n`` disease cases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = figure_cases(df.label_idx.to_numpy(), len(classes), n)      # the cases per_case_table made maps for
    if not pos:
        return
    fig, axes = plt.subplots(2, len(pos), figsize=(2.1 * len(pos), 4.4), squeeze=False)
    for c, i in enumerate(pos):
        img = ds.images[i].float().numpy().transpose(1, 2, 0)
        for r in range(2):
            axes[r, c].imshow(img if r == 0 else img.mean(2), cmap=None if r == 0 else "gray")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[1, c].imshow(cams[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        if bool(ds.has_mask[i]):
            axes[1, c].contour(ds.masks[i].numpy(), levels=[0.5], colors="yellow", linewidths=0.7)
        e = df.energy_in_mask.iloc[i]
        axes[0, c].set_title(f"{df.case_id.iloc[i]}\np={df[f'prob_{classes[-1]}'].iloc[i]:.2f}", fontsize=7)
        axes[1, c].set_title(f"energy in lesion {e:.2f}" if e == e else "", fontsize=7)
    fig.suptitle(f"Grad-CAM {title}".strip(), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def format_cls_table(metrics: dict) -> str:
    m, ci = metrics["model"], metrics.get("ci95", {})
    lines = [f"{'metric':<18}{'value':>8}   95 % CI (bootstrap over cases)"]
    for k in (*CLS_METRICS, "specificity", "balanced_accuracy", *LOC_METRICS):
        v = m.get(k, float("nan"))
        lo, hi = ci.get(k, (float("nan"), float("nan")))
        lines.append(f"{k:<18}{v:>8.3f}   [{lo:.3f}, {hi:.3f}]" if k in ci else f"{k:<18}{v:>8.3f}")
    b = metrics.get("baseline", {})
    if b:
        lines.append(f"baseline ({b['name']}): accuracy {b['accuracy']:.3f}, AUC {b['auc']:.2f}")
    return "\n".join(lines)
