"""Torch dataset over preprocessed shards (held in memory: small, and never the bottleneck)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from medops.engine.resident import ResidentDataset
from medops.errors import DataError
from medops.preprocess.shards import load_shard


def load_split(pre_dir: str | Path, index: pd.DataFrame, split: str | None):
    """(rows of the split, stacked images, per-case masks) read from the preprocessed shards."""
    pre_dir = Path(pre_dir)
    rows = index if split is None else index[index.split == split]
    if rows.empty:
        raise DataError(f"{pre_dir}/index.parquet", f"split_not_empty: no cases in split '{split}'",
                        "generate more cases or change split.fractions in params.yaml")
    imgs, masks = [], []
    for shard in rows.shard:
        z = load_shard(pre_dir / shard)
        imgs.append(z["image"])
        masks.append(z["mask"] if z["mask"].size else np.zeros(z["image"].shape[-2:], np.uint8))
    return rows, torch.from_numpy(np.stack(imgs)), np.stack(masks)


class SegmentationShardDataset(ResidentDataset):
    """Segmentation cases of one split: ``(image [3,S,S] float32, mask [1,S,S] float32, case_id)``."""

    def __init__(self, pre_dir: str | Path, index: pd.DataFrame, split: str | None):
        rows, self.images, masks = load_split(pre_dir, index, split)     # float16, N,3,S,S
        self.case_ids = rows.case_id.tolist()
        self.masks = torch.from_numpy(masks[:, None])                    # uint8, N,1,S,S

    def __len__(self):
        return len(self.case_ids)

    def __getitem__(self, i):
        return self.images[i].float(), self.masks[i].float(), i

    def resident_tensors(self):
        return {"images": self.images, "masks": self.masks}

    def resident_batch(self, t, idx):
        return [t["images"][idx].float(), t["masks"][idx].float(), idx]


class ClassificationDataset(ResidentDataset):
    """Cases of one split: ``(image [3,S,S] float32 in [0,1], label int64, index)``.

    ``augment`` (training split only; paper 002 section 3.2): random rotation (degrees),
    zoom (scale range) and horizontal flip, from torchvision transforms v2, drawn from torch's
    seeded generator so a resumed run sees the same augmentations."""

    def __init__(self, pre_dir: str | Path, index: pd.DataFrame, split: str | None, augment: dict | None = None):
        rows, self.images, masks = load_split(pre_dir, index, split)
        self.case_ids = rows.case_id.tolist()
        self.masks = torch.from_numpy(masks)
        self.has_mask = torch.tensor(rows.has_mask.to_numpy(bool))
        self.labels = torch.tensor(rows.label_idx.to_numpy(np.int64))
        self.transform = None
        if augment:
            from torchvision.transforms import v2

            z = float(augment.get("zoom", 0.0))
            self.transform = v2.Compose([
                v2.RandomAffine(degrees=float(augment.get("rotation_deg", 0.0)), scale=(1 - z, 1 + z)),
                v2.RandomHorizontalFlip(0.5 if augment.get("hflip", False) else 0.0)])

    def __len__(self):
        return len(self.case_ids)

    def __getitem__(self, i):
        x = self.images[i].float()
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i], i

    def resident_tensors(self):
        return {"images": self.images, "labels": self.labels}

    def resident_batch(self, t, idx):
        x = t["images"][idx].float()
        if self.transform is not None:  # per case, in batch order: the same draws as the DataLoader path
            x = torch.stack([self.transform(xi) for xi in x])
        return [x, t["labels"][idx], idx]
