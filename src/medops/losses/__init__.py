"""Losses, by name; MONAI implementations."""

from __future__ import annotations

from monai.losses import DiceCELoss

from medops.errors import ConfigError


def build_loss(name: str, *, dice_weight: float = 1.0, bce_weight: float = 1.0):
    """``dice_bce``: Dice + binary cross-entropy on logits (paper 000, Table 4)."""
    if name == "dice_bce":
        return DiceCELoss(sigmoid=True, lambda_dice=dice_weight, lambda_ce=bce_weight)
    raise ConfigError(f"loss '{name}'", "unknown loss", "use one of ['dice_bce']")
