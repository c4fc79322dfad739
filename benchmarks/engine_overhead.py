"""Engine step time (metric logging to MLflow + progress bar on) ÷ a bare PyTorch loop.

Same model, same batches, same optimiser; epochs alternate between the two
loops so drift on a shared machine hits both; the medians are compared.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch

from _common import prepared, save
from medops.data.dataset import SegmentationShardDataset as ShardDataset
from medops.engine import Trainer
from medops.models import get_model
from medops.tasks.segmentation import SegmentationTask


def bare_epoch(task, opt, loader):
    task.train()
    for x, y, i in loader:
        loss = task.train_step([x, y, i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main(profile: str = "quick", rounds: int = 4) -> dict:
    from medops import tracking

    cfg, pre = prepared(profile, n_cases=48)
    fam = cfg.family("fusion_seg")
    tcfg = replace(fam.train, epochs=1, scheduler="none")
    idx = pd.read_parquet(pre / "index.parquet")
    train_ds = ShardDataset(pre, idx, None)
    val_ds = ShardDataset(pre, idx.iloc[:1], None)  # near-empty validation: we time training steps
    os.chdir(tempfile.mkdtemp())
    run = tracking.start_or_resume_run("bench", "engine_overhead", tags={})
    logger = tracking.MlflowLogger(run.info.run_id)
    net = get_model(fam.model.arch, **{k: v for k, v in asdict(fam.model).items() if k != "arch"})
    bare_task = SegmentationTask(net, tcfg)
    opt, _ = bare_task.configure_optimizers()
    eng_times, bare_times = [], []
    n_steps = len(train_ds) // tcfg.batch_size
    for r in range(rounds):
        trainer = Trainer(SegmentationTask(net, tcfg), replace(tcfg, epochs=1), Path("ck"), logger=logger,
                          progress=True, device=torch.device("cpu"))
        t0 = time.perf_counter()
        trainer.fit(train_ds, val_ds)
        t_eng = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer.validate(val_ds)
        t_val = time.perf_counter() - t0
        eng_times.append(t_eng - t_val)
        t0 = time.perf_counter()
        bare_epoch(bare_task, opt, trainer._loader(train_ds, r))
        bare_times.append(time.perf_counter() - t0)
    tracking.end_run()
    e, b = statistics.median(eng_times), statistics.median(bare_times)
    res = {"profile": profile, "steps_per_epoch": n_steps, "engine_epoch_s": round(e, 3), "bare_epoch_s": round(b, 3),
           "engine_step_ms": round(1000 * e / n_steps, 1), "bare_step_ms": round(1000 * b / n_steps, 1),
           "ratio": round(e / b, 3), "goal": "<= 1.05",
           "note": "engine includes checkpoint writing (last.pt, best.pt) once per epoch"}
    save("engine_overhead", res)
    return res


if __name__ == "__main__":
    main()
