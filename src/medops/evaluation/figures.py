"""Figures: loss curves and overlay grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def loss_curves(history: pd.DataFrame, out: Path) -> Path:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(history.epoch, history.train_loss, label="train")
    ax[0].plot(history.epoch, history.val_loss, label="validation")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss")
    ax[0].legend()
    ax[0].set_title("loss")
    for col, name in (("val_dice", "validation DSC"), ("val_auc", "validation AUC-ROC")):
        if col in history:
            ax[1].plot(history.epoch, history[col], color="tab:green")
            ax[1].set_xlabel("epoch")
            ax[1].set_ylabel(name)
            ax[1].set_title(name)
            break
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def overlay_grid(rows: list[dict], modalities: list[str], out: Path) -> Path:
    """rows: {label, case_id, dsc, image [M,S,S], truth [S,S], pred [S,S]}."""
    ncol = len(modalities) + 2
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.3 * ncol, 2.4 * len(rows)))
    axes = np.atleast_2d(axes)
    for r, row in enumerate(rows):
        for c, m in enumerate(modalities):
            axes[r, c].imshow(row["image"][c], cmap="gray", vmin=0, vmax=1)
            axes[r, c].contour(row["truth"], levels=[0.5], colors="lime", linewidths=0.8)
            axes[r, c].set_title(m.upper() if r == 0 else "", fontsize=9)
        axes[r, -2].imshow(row["truth"], cmap="gray")
        axes[r, -2].set_title("truth" if r == 0 else "", fontsize=9)
        axes[r, -1].imshow(row["image"][-1], cmap="gray", vmin=0, vmax=1)
        axes[r, -1].imshow(np.ma.masked_where(row["pred"] == 0, row["pred"]), cmap="autumn", alpha=0.55)
        axes[r, -1].contour(row["truth"], levels=[0.5], colors="lime", linewidths=0.8)
        axes[r, -1].set_title("prediction" if r == 0 else "", fontsize=9)
        axes[r, 0].set_ylabel(f"{row['label']}\n{row['case_id']}\nDSC {row['dsc']:.3f}", fontsize=8)
        for a in axes[r]:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
