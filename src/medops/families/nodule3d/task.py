"""Training hooks of `nodule3d`: Eq. 13 (cross-entropy + alpha x the power AUC surrogate of Eq. 12).

A multi-scale ensemble trains its three sub-networks in one run on the same batches, each with its own
loss and alpha (0.5 / 0.75 / 1 for 32 / 48 / 64 in the paper) — the same as three separate trainings,
since they share no parameters. After every validation pass the ensemble weights (Eq. 4) are grid-
searched on the simplex over the validation cases only and stored in the model, so the checkpoint
that validation selects carries the weights chosen with it."""

from __future__ import annotations

import torch

from medops.errors import ConfigError
from medops.losses.auc import CEPowerAUCLoss
from medops.tasks.classification import ClassificationTask, class_weights


class Nodule3DTask(ClassificationTask):
    def __init__(self, net, cfg, dataset=None, *, weight_step: float = 0.1, **_):
        from medops.engine import TaskModule

        TaskModule.__init__(self, net, cfg)
        self.num_classes = 2
        labels = dataset.labels.numpy() if dataset is not None else [0, 1]
        self.class_weight = class_weights(labels, 2, cfg.class_weights)
        self.multi = hasattr(net, "forward_all")
        n = len(net.subnets) if self.multi else 1
        if cfg.loss not in ("ce", "ce_auc"):
            raise ConfigError("train.loss", f"'{cfg.loss}' is not a loss of this family", "use ce or ce_auc (Eq. 13)")
        al = [float(a) for a in cfg.auc_alpha]
        alphas = al[-n:] if len(al) >= n else [al[-1]] * n
        if cfg.loss == "ce":
            alphas = [0.0] * n
        self.losses = torch.nn.ModuleList([CEPowerAUCLoss(a, cfg.auc_lambda, self.class_weight) for a in alphas])
        self.loss_fn = self.losses[-1]
        self.weight_step = weight_step
        self.monitor, self.monitor_mode = cfg.monitor, ("min" if cfg.monitor.endswith("loss") else "max")

    def train_step(self, batch):
        x, y, _ = batch
        if self.multi:
            return sum(fn(lg, y) for fn, lg in zip(self.losses, self.net.forward_all(x)))
        return self.loss_fn(self.net(x), y)

    def validation_step(self, batch):
        x, y, _ = batch
        if self.multi:
            logits = [lg.float() for lg in self.net.forward_all(x)]
            loss = sum(fn(lg, y) for fn, lg in zip(self.losses, logits))
            prob = torch.stack([torch.softmax(lg, 1) for lg in logits])           # (S, B, 2)
        else:
            lg = self.net(x).float()
            loss, prob = self.loss_fn(lg, y), torch.softmax(lg, 1)[None]
        return {"loss": loss.detach() * len(x), "n": len(x), "prob": prob.cpu(), "y": y.cpu()}

    def validation_epoch_end(self, outputs):
        from medops.metrics.classification import classification_metrics
        from medops.models.nodule3d import simplex_grid

        n = sum(o["n"] for o in outputs)
        prob, y = torch.cat([o["prob"] for o in outputs], 1), torch.cat([o["y"] for o in outputs])
        out = {"val_loss": float(sum(o["loss"] for o in outputs) / n)}
        if self.multi:
            w = choose_weights(prob[:, :, 1], y, simplex_grid(prob.shape[0], self.weight_step))
            self.net.weights.copy_(w.to(self.net.weights.device))
            for s, p in zip(self.net.scales, prob):
                out[f"val_auc_{s}"] = classification_metrics(p, y)["auc"]
            out.update({f"weight_{s}": float(v) for s, v in zip(self.net.scales, w)})
            p = torch.einsum("s,sbc->bc", w, prob)
        else:
            p = prob[0]
        m = classification_metrics(p, y)
        out.update({"val_accuracy": m["accuracy"], "val_balanced_accuracy": m["balanced_accuracy"], "val_auc": m["auc"]})
        return out


def choose_weights(scores: torch.Tensor, y: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The simplex weights (rows of ``grid``) whose weighted malignant score has the best AUC on (scores
    (S, N), y); ties go to the most even weights (closest to uniform)."""
    import torchmetrics.functional.classification as tmc

    if len(torch.unique(y)) < 2:
        return torch.full((scores.shape[0],), 1.0 / scores.shape[0])
    aucs = torch.stack([tmc.binary_auroc(w @ scores, y) for w in grid])
    best = aucs.max()
    cand = grid[aucs >= best - 1e-9]
    even = ((cand - 1.0 / grid.shape[1]) ** 2).sum(1)
    return cand[int(torch.argmin(even))]
