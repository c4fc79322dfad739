"""Training hooks for segmentation (used by the shared Trainer)."""

from __future__ import annotations

import torch

from medops.config import TrainConfig
from medops.engine import TaskModule
from medops.losses import build_loss
from medops.metrics import segmentation_metrics


class SegmentationTask(TaskModule):
    monitor = "val_dice"
    monitor_mode = "max"

    def __init__(self, net, cfg: TrainConfig, threshold: float = 0.5, dataset=None, **_):
        super().__init__(net, cfg)
        self.loss_fn = build_loss(cfg.loss, dice_weight=cfg.dice_weight, bce_weight=cfg.bce_weight)
        self.threshold = threshold
        self.monitor = cfg.monitor

    def train_step(self, batch):
        x, y, _ = batch
        return self.loss_fn(self.net(x), y)

    def validation_step(self, batch):
        x, y, _ = batch
        logits = self.net(x)
        loss = self.loss_fn(logits.float(), y)
        pred = (torch.sigmoid(logits) >= self.threshold)
        return {"loss": loss.detach() * len(x), "n": len(x), "dsc": segmentation_metrics(pred, y)["dsc"]}

    def validation_epoch_end(self, outputs):
        n = sum(o["n"] for o in outputs)
        dsc = torch.cat([o["dsc"] for o in outputs])
        return {"val_loss": float(sum(o["loss"] for o in outputs) / n), "val_dice": float(torch.nanmean(dsc))}

    def epoch_extras(self):
        return getattr(self.net, "attention_weights", lambda: {})()
