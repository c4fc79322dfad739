"""Classification metrics (paper 002, Table 1) from torchmetrics, with bootstrap CIs over cases."""

from __future__ import annotations

import numpy as np
import torch
import torchmetrics.functional.classification as tmc

CLS_METRICS = ("accuracy", "precision", "recall", "f1", "auc")


def classification_metrics(prob: torch.Tensor, y: torch.Tensor, positive: int = 1) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), specificity, F1 and AUC-ROC of the positive
    (disease) class for binary tasks; macro averages for more classes. ``prob``: (N, C) softmax."""
    prob, y = torch.as_tensor(prob).float(), torch.as_tensor(y).long()
    c = prob.shape[1]
    pred = prob.argmax(1)
    out = {"accuracy": float((pred == y).float().mean())}
    if c == 2:
        p, t = prob[:, positive], (y == positive).long()
        pp = (pred == positive).long()
        tp, fp = int(((pp == 1) & (t == 1)).sum()), int(((pp == 1) & (t == 0)).sum())
        fn, tn = int(((pp == 0) & (t == 1)).sum()), int(((pp == 0) & (t == 0)).sum())
        out["precision"] = tp / (tp + fp) if tp + fp else 0.0
        out["recall"] = tp / (tp + fn) if tp + fn else float("nan")
        out["specificity"] = tn / (tn + fp) if tn + fp else float("nan")
        out["f1"] = float(tmc.binary_f1_score(pp, t))
        out["auc"] = float(tmc.binary_auroc(p, t)) if 0 < int(t.sum()) < len(t) else float("nan")
        out["balanced_accuracy"] = float(np.nanmean([out["recall"], out["specificity"]]))
    else:
        out["precision"] = float(tmc.multiclass_precision(pred, y, num_classes=c, average="macro"))
        out["recall"] = float(tmc.multiclass_recall(pred, y, num_classes=c, average="macro"))
        out["specificity"] = float(tmc.multiclass_specificity(pred, y, num_classes=c, average="macro"))
        out["f1"] = float(tmc.multiclass_f1_score(pred, y, num_classes=c, average="macro"))
        out["auc"] = float(tmc.multiclass_auroc(prob, y, num_classes=c, average="macro"))
        out["balanced_accuracy"] = out["recall"]
    return out


def bootstrap_ci(prob, y, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI over test cases for every metric (resamples keep both classes)."""
    prob, y = np.asarray(prob, np.float32), np.asarray(y)
    rng = np.random.default_rng(seed)
    vals: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < prob.shape[1]:
            continue
        for k, v in classification_metrics(torch.from_numpy(prob[idx]), torch.from_numpy(y[idx])).items():
            vals.setdefault(k, []).append(v)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {k: (float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))) for k, v in vals.items()}


def binary_auc(y, prob) -> float:
    """AUC-ROC of positive-class probabilities (nan unless both classes are present)."""
    y = np.asarray(y)
    if not 0 < int((y == 1).sum()) < len(y):
        return float("nan")
    return float(tmc.binary_auroc(torch.as_tensor(np.asarray(prob, float)), torch.from_numpy((y == 1).astype(np.int64))))


def paired_auc_test(y, prob_a, prob_b, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """One-sided paired bootstrap test that model A's AUC exceeds model B's on the same cases.

    Cases are resampled jointly; p = share of resamples where AUC_A - AUC_B <= 0; ``se`` = the bootstrap
    standard error of the difference."""
    y, a, b = np.asarray(y), np.asarray(prob_a, float), np.asarray(prob_b, float)
    t = torch.from_numpy((y == 1).astype(np.int64))

    def auc(p, idx):
        return float(tmc.binary_auroc(torch.from_numpy(p[idx]), t[idx]))

    full = np.arange(len(y))
    d0 = auc(a, full) - auc(b, full)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if 0 < int(t[idx].sum()) < len(idx):
            diffs.append(auc(a, idx) - auc(b, idx))
    diffs = np.asarray(diffs)
    if len(diffs) == 0 or np.allclose(a, b):
        return {"n": int(len(y)), "mean_diff": d0, "ci_low": float("nan"), "ci_high": float("nan"), "p": 1.0,
                "se": 0.0 if len(diffs) else float("nan")}
    return {"n": int(len(y)), "mean_diff": float(d0), "ci_low": float(np.percentile(diffs, 2.5)),
            "ci_high": float(np.percentile(diffs, 97.5)), "p": float((np.sum(diffs <= 0) + 1) / (len(diffs) + 1)),
            "se": float(diffs.std(ddof=1)) if len(diffs) > 1 else float("nan")}
