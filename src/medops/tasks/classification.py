"""Training hooks for classification families (used by the shared Trainer).

Loss (paper 002 section 3.5): categorical cross-entropy or focal loss (MONAI ``FocalLoss``,
gamma from params), both with optional inverse-frequency class weights computed from the
training split, so the minority (disease) class is not drowned out. Validation reports
loss, accuracy, balanced accuracy and AUC-ROC (torchmetrics).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from monai.losses import FocalLoss

from medops.config import TrainConfig
from medops.engine import TaskModule
from medops.errors import ConfigError


def class_weights(labels, num_classes: int, mode: str) -> torch.Tensor | None:
    """``inverse_frequency``: w_c = N / (C * n_c) (mean weight 1 over cases); ``none``: no weights."""
    if mode == "none":
        return None
    if mode != "inverse_frequency":
        raise ConfigError(f"class_weights '{mode}'", "unknown class weighting", "use 'inverse_frequency' or 'none'")
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(float)
    if (counts == 0).any():
        raise ConfigError("training split", f"a class has no training cases (counts {counts.astype(int).tolist()})",
                          "add cases of every class or change split.fractions")
    return torch.tensor(counts.sum() / (num_classes * counts), dtype=torch.float32)


class ClassificationLoss(nn.Module):
    def __init__(self, name: str, weight: torch.Tensor | None, gamma: float = 2.0):
        super().__init__()
        self.name = name
        if name == "ce":
            self.fn = nn.CrossEntropyLoss(weight=weight)
        elif name == "focal":
            self.fn = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, weight=weight)
        else:
            raise ConfigError(f"loss '{name}'", "unknown classification loss", "use one of ['ce', 'focal']")

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.name == "ce":
            return self.fn(logits, y)
        return self.fn(logits, y[:, None])


class ClassificationTask(TaskModule):
    monitor = "val_loss"
    monitor_mode = "min"

    def __init__(self, net, cfg: TrainConfig, dataset=None, **_):
        super().__init__(net, cfg)
        self.num_classes = net.head[-1].out_features
        labels = dataset.labels.numpy() if dataset is not None else np.arange(self.num_classes)
        # None when unweighted; the loss keeps (and moves) its own copy, this one is logged as a run tag
        self.class_weight = class_weights(labels, self.num_classes, cfg.class_weights)
        self.loss_fn = ClassificationLoss(cfg.loss, self.class_weight, cfg.focal_gamma)
        self.monitor, self.monitor_mode = cfg.monitor, ("min" if cfg.monitor.endswith("loss") else "max")

    def train_step(self, batch):
        x, y, _ = batch
        return self.loss_fn(self.net(x), y)

    def validation_step(self, batch):
        x, y, _ = batch
        logits = self.net(x).float()
        return {"loss": self.loss_fn(logits, y).detach() * len(x), "n": len(x),
                "prob": torch.softmax(logits, 1).cpu(), "y": y.cpu()}

    def validation_epoch_end(self, outputs):
        from medops.metrics.classification import classification_metrics

        n = sum(o["n"] for o in outputs)
        prob, y = torch.cat([o["prob"] for o in outputs]), torch.cat([o["y"] for o in outputs])
        m = classification_metrics(prob, y)
        return {"val_loss": float(sum(o["loss"] for o in outputs) / n), "val_accuracy": m["accuracy"],
                "val_balanced_accuracy": m["balanced_accuracy"], "val_auc": m["auc"]}
