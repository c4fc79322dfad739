"""Training data of `nodule3d`: preprocessed nodule cubes, with 3-D augmentation on the training split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medops.data.dataset import load_split
from medops.engine.resident import ResidentDataset


def augment3d(x: torch.Tensor, gen: torch.Generator | None, flips: bool, translate: int) -> torch.Tensor:
    """Random flips on the three axes and a random shift of up to ``translate`` voxels (air, 0, fills in)
    of one ``(1, D, H, W)`` cube; draws from ``gen`` (torch's default generator when None: seeded)."""
    if flips:
        dims = [d for d in (1, 2, 3) if bool(torch.rand((), generator=gen) < 0.5)]
        if dims:
            x = torch.flip(x, dims)
    if translate:
        s = torch.randint(-translate, translate + 1, (3,), generator=gen).tolist()
        if any(s):
            p = translate
            x = torch.nn.functional.pad(x, (p,) * 6, value=0.0)
            d, h, w = x.shape[1:]
            x = x[:, p - s[0]:d - p - s[0], p - s[1]:h - p - s[1], p - s[2]:w - p - s[2]]
    return x


class NoduleDataset(ResidentDataset):
    """Nodules of one split (or the given rows): ``(cube [1,C,C,C] float32 in [0,1], label int64, index)``."""

    def __init__(self, pre_dir: str | Path, index: pd.DataFrame, split: str | None = None,
                 augment: dict | None = None):
        rows, self.images, _ = load_split(pre_dir, index, split)
        self.case_ids = rows.nodule_id.tolist()
        self.rows = rows.reset_index(drop=True)
        self.labels = torch.tensor(rows.label_idx.to_numpy(np.int64))
        self.augment = augment if augment and (augment.get("flips") or augment.get("translate")) else None

    def __len__(self):
        return len(self.case_ids)

    def _aug(self, x):
        return augment3d(x, None, bool(self.augment.get("flips")), int(self.augment.get("translate", 0))) \
            if self.augment else x

    def __getitem__(self, i):
        return self._aug(self.images[i].float()), self.labels[i], i

    def resident_tensors(self):
        return {"images": self.images, "labels": self.labels}

    def resident_batch(self, t, idx):
        x = t["images"][idx].float()
        if self.augment:
            x = torch.stack([self._aug(xi) for xi in x])
        return [x, t["labels"][idx], idx]
