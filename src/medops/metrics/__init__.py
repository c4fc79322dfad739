"""Segmentation metrics (paper 000, Table 5) from MONAI's confusion matrix."""

from __future__ import annotations

import torch
from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix

SEG_METRICS = {"dsc": "f1 score", "iou": "threat score", "sensitivity": "sensitivity", "specificity": "specificity"}


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-case DSC = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), sensitivity, specificity.

    ``pred`` and ``target`` are binary tensors of shape (B, 1, H, W).
    """
    cm = get_confusion_matrix(pred.float(), target.float(), include_background=True)  # B, 1, 4
    return {k: compute_confusion_matrix_metric(v, cm).reshape(-1) for k, v in SEG_METRICS.items()}
