"""Pairwise AUC surrogate losses (paper 004, Eq. 10-13; after Gao & Zhou 2012, Gao et al. 2016).

The power surrogate over the positive-negative pairs of a batch, on scores ``F(x) in (0, 1)``::

    l_lambda = sum_i sum_j (1 - (F(x_i+) - F(x_j-)))^lambda / (lambda * T+ * T-)

``lambda = 1`` is the hinge form of Eq. 10 (``1 - (F+ - F-)`` is in (0, 2), so no max is needed),
``lambda = 2`` the squared loss of Eq. 11 (consistent with AUC for linear F). MONAI has no such loss
(its ``AUCMLoss`` is the AUC-margin min-max loss, a different objective).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def power_auc_loss(scores: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 12 for scores in (0, 1) and binary labels; zero (with a gradient path) when the batch has one class."""
    pos, neg = scores[y == 1], scores[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return scores.sum() * 0.0
    margin = 1.0 - (pos[:, None] - neg[None, :])          # (T+, T-), in (0, 2)
    return margin.clamp_min(0).pow(lam).mean() / lam


class CEPowerAUCLoss(nn.Module):
    """Eq. 13: cross-entropy on 2-class logits + ``alpha`` x the power AUC surrogate on the malignant
    probability. ``alpha = 0`` is plain cross-entropy."""

    def __init__(self, alpha: float = 1.0, lam: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        if lam <= 0:
            raise ValueError(f"lambda must be > 0 (got {lam})")
        self.alpha, self.lam = float(alpha), float(lam)
        self.ce = nn.CrossEntropyLoss(weight=weight)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.ce(logits, y)
        if self.alpha:
            loss = loss + self.alpha * power_auc_loss(torch.softmax(logits.float(), 1)[:, 1], y, self.lam)
        return loss
