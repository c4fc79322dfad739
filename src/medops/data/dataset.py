"""Torch dataset over preprocessed shards (held in memory: small, and never the bottleneck)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medops.errors import DataError


class ShardDataset(Dataset):
    """Cases of one split: ``(image [3,S,S] float32, mask [1,S,S] float32, case_id)``."""

    def __init__(self, pre_dir: str | Path, index: pd.DataFrame, split: str | None):
        pre_dir = Path(pre_dir)
        rows = index if split is None else index[index.split == split]
        if rows.empty:
            raise DataError(f"{pre_dir}/index.parquet", f"split_not_empty: no cases in split '{split}'",
                            "generate more cases or change split.fractions in params.yaml")
        self.case_ids = rows.case_id.tolist()
        imgs, masks = [], []
        for shard in rows.shard:
            z = np.load(pre_dir / shard)
            imgs.append(z["image"])
            masks.append(z["mask"])
        self.images = torch.from_numpy(np.stack(imgs))                   # float16, N,3,S,S
        self.masks = torch.from_numpy(np.stack(masks)[:, None])          # uint8, N,1,S,S

    def __len__(self):
        return len(self.case_ids)

    def __getitem__(self, i):
        return self.images[i].float(), self.masks[i].float(), i
