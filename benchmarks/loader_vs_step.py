"""Loader throughput ÷ training-step throughput on CPU (quick profile model and image size)."""

from __future__ import annotations

import time
from dataclasses import asdict

import pandas as pd
import torch

from _common import prepared, save
from medops.data.dataset import SegmentationShardDataset as ShardDataset
from medops.engine import Trainer
from medops.models import get_model
from medops.tasks.segmentation import SegmentationTask


def main(profile: str = "quick") -> dict:
    cfg, pre = prepared(profile)
    fam = cfg.family("fusion_seg")
    ds = ShardDataset(pre, pd.read_parquet(pre / "index.parquet"), None)
    trainer = Trainer(SegmentationTask(get_model(fam.model.arch, **{k: v for k, v in asdict(fam.model).items() if k != "arch"}), fam.train), fam.train,
                      pre / "ck", progress=False)
    # loader alone: iterate the exact DataLoader the trainer uses
    n, t0 = 0, time.perf_counter()
    for epoch in range(20):
        for x, y, _ in trainer._loader(ds, epoch):
            n += len(x)
    loader_sps = n / (time.perf_counter() - t0)
    # full step: loader + forward + backward + optimiser
    task = trainer.task
    opt, _ = task.configure_optimizers()
    task.train()
    n, t0 = 0, time.perf_counter()
    for epoch in range(2):
        for x, y, i in trainer._loader(ds, epoch):
            loss = task.train_step([x, y, i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(x)
    step_sps = n / (time.perf_counter() - t0)
    res = {"profile": profile, "image_size": cfg.preprocess.image_size, "batch_size": fam.train.batch_size,
           "threads": torch.get_num_threads(), "loader_samples_per_s": round(loader_sps, 1),
           "train_step_samples_per_s": round(step_sps, 2), "ratio": round(loader_sps / step_sps, 1), "goal": ">= 3"}
    save("loader_vs_step", res)
    return res


if __name__ == "__main__":
    main()
