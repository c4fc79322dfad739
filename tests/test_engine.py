"""The shared trainer: resume after a crash mid-epoch ends exactly like an uninterrupted run."""

import dataclasses

import pandas as pd
import pytest
import torch

from medops.data.dataset import ShardDataset
from medops.engine import Trainer, load_checkpoint
from medops.models import get_model
from medops.models.fusion_seg.task import SegmentationTask


class Crash(Exception):
    pass


def _run(pre, cfg, out, *, resume=False, crash_at=None):
    idx = pd.read_parquet(pre / "index.parquet")
    tr, va = ShardDataset(pre, idx, "train"), ShardDataset(pre, idx, "val")
    torch.manual_seed(0)
    net = get_model("fusion_seg", channels=(4, 8))
    cbs = []
    if crash_at is not None:
        def cb(event, info):
            if event == "train_batch_end" and (info["epoch"], info["step"]) == crash_at:
                raise Crash()
        cbs.append(cb)
    tr_ = Trainer(SegmentationTask(net, cfg), cfg, out, progress=False, callbacks=cbs, device=torch.device("cpu"))
    return tr_.fit(tr, va, resume=resume), net


def test_resume_after_mid_epoch_crash_matches_uninterrupted(preprocessed, smoke_cfg, tmp_path):
    cfg = dataclasses.replace(smoke_cfg.family("fusion_seg").train, epochs=3, batch_size=4, seed=3)
    full, net_a = _run(preprocessed, cfg, tmp_path / "a")
    with pytest.raises(Crash):
        _run(preprocessed, cfg, tmp_path / "b", crash_at=(1, 1))     # dies mid-epoch 2
    assert load_checkpoint(tmp_path / "b/last.pt")["epoch"] == 1
    resumed, net_b = _run(preprocessed, cfg, tmp_path / "b", resume=True)
    assert len(resumed) == 3
    for a, b in zip(full, resumed):
        for k in ("train_loss", "val_loss", "val_dice"):
            assert a[k] == pytest.approx(b[k], abs=1e-6), (k, a, b)
    for (ka, va), (kb, vb) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), ka


def test_checkpoints_load_with_weights_only_and_hold_full_state(preprocessed, smoke_cfg, tmp_path):
    cfg = dataclasses.replace(smoke_cfg.family("fusion_seg").train, epochs=1, batch_size=4)
    _run(preprocessed, cfg, tmp_path)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "best", "history", "scaler"} <= set(last)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert "val_dice" in best


def test_non_finite_loss_stops_with_a_clear_error(preprocessed, smoke_cfg, tmp_path):
    cfg = dataclasses.replace(smoke_cfg.family("fusion_seg").train, epochs=1, batch_size=4, lr=1e30)
    idx = pd.read_parquet(preprocessed / "index.parquet")
    tr, va = ShardDataset(preprocessed, idx, "train"), ShardDataset(preprocessed, idx, "val")
    net = get_model("fusion_seg", channels=(4, 8))

    class NanTask(SegmentationTask):
        def train_step(self, batch):
            return super().train_step(batch) * float("nan")

    with pytest.raises(FloatingPointError, match="non-finite training loss at epoch 1"):
        Trainer(NanTask(net, cfg), cfg, tmp_path, progress=False).fit(tr, va)
