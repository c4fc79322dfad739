"""The shared trainer: resume after a crash mid-epoch ends exactly like an uninterrupted run."""

import dataclasses

import pandas as pd
import pytest
import torch

from medops.data.dataset import SegmentationShardDataset as ShardDataset
from medops.engine import Trainer, load_checkpoint
from medops.models import get_model
from medops.tasks.segmentation import SegmentationTask


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


def test_early_stopping_on_the_monitor_and_a_resumed_run_stops_at_the_same_epoch(preprocessed, smoke_cfg, tmp_path):
    """Paper 002: early stopping on validation loss. A validation loss that only gets worse after epoch 1
    stops training `early_stopping` epochs later; best.pt keeps epoch 1; resuming changes nothing."""
    cfg = dataclasses.replace(smoke_cfg.family("fusion_seg").train, epochs=10, batch_size=4, early_stopping=2,
                              monitor="val_loss")
    idx = pd.read_parquet(preprocessed / "index.parquet")
    tr, va = ShardDataset(preprocessed, idx, "train"), ShardDataset(preprocessed, idx, "val")

    class Worsening(SegmentationTask):
        monitor_mode = "min"
        calls = 0

        def validation_epoch_end(self, outputs):
            Worsening.calls += 1
            return {"val_loss": float(Worsening.calls), "val_dice": 0.0}

    def fit(resume=False):
        torch.manual_seed(0)
        task = Worsening(get_model("fusion_seg", channels=(4, 8)), cfg)
        return Trainer(task, cfg, tmp_path, progress=False, device=torch.device("cpu")).fit(tr, va, resume=resume)

    hist = fit()
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert len(fit(resume=True)) == 3                       # the resumed run stops right away, like the first


def test_a_plateau_reached_in_the_last_epoch_of_the_budget_counts_as_converged():
    """The convergence flag of an ablation cell is the stopping rule itself: best 2 epochs old when the
    8-epoch budget ends = converged (it was recorded as 'budget ran out' before); still improving = not."""
    from medops.engine.trainer import plateaued

    dice = [0.0, 0.0, 0.02, 0.72, 0.55, 0.73, 0.55, 0.58]            # best at epoch 6 of 8, patience 2
    assert plateaued(dice, "max", 2) and not plateaued(dice, "max", 3)
    assert not plateaued([0.1, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.91], "max", 2)
    assert plateaued([1.0, 0.5, 0.6, 0.7], "min", 2) and not plateaued([1.0, 0.5, 0.6, 0.7], "min", 0)
    assert plateaued([0.5, 0.7, 0.7, 0.7], "max", 2)                 # a tie is no improvement: the first best counts


def test_min_delta_gains_below_the_tolerance_do_not_reset_the_plateau_but_a_creep_that_adds_up_does():
    """Early stopping's tolerance (Keras/Lightning ``min_delta``): a gain of at most ``min_delta`` over the last
    improvement is no improvement, so noise of that size cannot keep a cell from converging; gains that add up
    to more than ``min_delta`` still count; ``min_delta`` 0 is the plain rule."""
    from medops.engine.trainer import plateaued

    noisy = [0.60, 0.80, 0.803, 0.801, 0.806, 0.804]                # +0.006 at most after epoch 2
    assert not plateaued(noisy, "max", 3)                            # plain rule: epoch 5's +0.003 was a new best
    assert plateaued(noisy, "max", 3, min_delta=0.01)               # within 0.01 of epoch 2 for 4 epochs
    creep = [0.60, 0.80, 0.806, 0.812, 0.818, 0.824]                # +0.006 an epoch keeps adding up
    assert not plateaued(creep, "max", 3, min_delta=0.01)           # epoch 4 is > 0.01 above epoch 2: improved
    loss = [1.0, 0.50, 0.49, 0.495, 0.48]                           # a loss: lower is better
    assert plateaued(loss, "min", 3, min_delta=0.05) and not plateaued(loss, "min", 3)
    assert plateaued([0.5, 0.7, 0.7, 0.7], "max", 2, min_delta=0.0) == plateaued([0.5, 0.7, 0.7, 0.7], "max", 2)


def test_an_ablation_min_delta_reaches_the_cells_and_a_negative_one_is_refused():
    """``ablation.<family>.min_delta`` (per profile) overrides the family's ``train.min_delta`` in every cell's
    training config; a negative tolerance is refused before any training, naming the key."""
    from medops.config import AblationConfig, ConfigError, TrainConfig

    abl = AblationConfig(epochs=8, patience=2, min_delta=0.005, cells={"a": {}})
    cfg = abl.cell_train("a", TrainConfig(min_delta=0.0, early_stopping=4), seed=1)
    assert (cfg.min_delta, cfg.early_stopping, cfg.epochs) == (0.005, 2, 8)
    assert AblationConfig(cells={"a": {}}).cell_train("a", TrainConfig(min_delta=0.02), seed=1).min_delta == 0.02
    with pytest.raises(ConfigError, match=r"ablation\.fam\.min_delta"):
        AblationConfig(min_delta=-0.1, cells={"a": {}}).check("fam")


def test_augmentation_on_the_training_split_only(tmp_path):
    """Paper 002 section 3.2: rotation, zoom and flips vary a training image between epochs; validation
    images are returned exactly as preprocessed."""
    import numpy as np

    from medops.data.dataset import ClassificationDataset

    (tmp_path / "shards").mkdir()
    rows = []
    for i, split in enumerate(["train", "val"]):
        img = np.random.default_rng(i).random((3, 32, 32)).astype(np.float16)
        np.savez(tmp_path / f"shards/{i}.npz", image=img, mask=np.zeros(0, np.uint8), label=np.int64(i))
        rows.append({"case_id": f"c{i}", "split": split, "shard": f"shards/{i}.npz", "label_idx": i, "has_mask": False})
    idx = pd.DataFrame(rows)
    train = ClassificationDataset(tmp_path, idx, "train", augment={"rotation_deg": 15, "zoom": 0.1, "hflip": True})
    val = ClassificationDataset(tmp_path, idx, "val")
    torch.manual_seed(0)
    a, b = train[0][0], train[0][0]
    assert not torch.equal(a, b) and a.shape == (3, 32, 32)
    assert torch.equal(val[0][0], val[0][0]) and torch.equal(val[0][0], val.images[0].float())


def _sigterm_at(at):
    import os
    import signal

    def cb(event, info):
        if event == "train_batch_end" and (info["epoch"], info["step"]) == at:
            os.kill(os.getpid(), signal.SIGTERM)  # what a pod eviction sends
    return cb


@pytest.mark.parametrize("async_checkpoint", [True, False])
def test_sigterm_mid_epoch_saves_the_step_and_resume_matches_uninterrupted(preprocessed, smoke_cfg, tmp_path,
                                                                           async_checkpoint):
    """Preemption: the trainer finishes the step, writes last.pt (mid-epoch) and raises Preempted (exit code 75 at
    the CLI); `--resume` continues at the next batch and ends with the history of an uninterrupted run."""
    from medops.engine.trainer import Preempted

    cfg = dataclasses.replace(smoke_cfg.family("fusion_seg").train, epochs=3, batch_size=2, seed=5,
                              async_checkpoint=async_checkpoint, nonfinite_check_every=2)
    full, net_a = _run(preprocessed, cfg, tmp_path / "a")
    idx = pd.read_parquet(preprocessed / "index.parquet")
    tr, va = ShardDataset(preprocessed, idx, "train"), ShardDataset(preprocessed, idx, "val")
    torch.manual_seed(0)
    net = get_model("fusion_seg", channels=(4, 8))
    t = Trainer(SegmentationTask(net, cfg), cfg, tmp_path / "b", progress=False, callbacks=[_sigterm_at((1, 1))],
                device=torch.device("cpu"))
    with pytest.raises(Preempted, match="epoch 2, step 2"):
        t.fit(tr, va)
    ck = load_checkpoint(tmp_path / "b/last.pt")
    assert ck["epoch"] == 1 and ck["partial"][0] == 2         # one epoch done, two steps of the second
    resumed, net_b = _run(preprocessed, cfg, tmp_path / "b", resume=True)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(full, resumed):
        for k in ("train_loss", "val_loss", "val_dice"):
            assert a[k] == pytest.approx(b[k], abs=1e-6), (k, a, b)
    for (ka, va_), (kb, vb) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
        assert torch.allclose(va_.float(), vb.float(), atol=1e-6), ka


def test_resume_restores_generators_from_cpu_tensors_whatever_the_device(preprocessed, smoke_cfg, tmp_path,
                                                                         monkeypatch):
    """`torch.set_rng_state` needs a CPU ByteTensor: a checkpoint is loaded on the CPU and moved explicitly (the
    old path mapped it to the training device, which crashed every `--resume` on CUDA)."""
    cfg = dataclasses.replace(smoke_cfg.family("fusion_seg").train, epochs=1, batch_size=4)
    _run(preprocessed, cfg, tmp_path)
    seen = []
    real = torch.set_rng_state
    monkeypatch.setattr(torch, "set_rng_state", lambda t: (seen.append((t.device.type, t.dtype)), real(t)))
    net = get_model("fusion_seg", channels=(4, 8))
    task = SegmentationTask(net, cfg)
    trainer = Trainer(task, cfg, tmp_path, progress=False, device=torch.device("meta"))  # any non-CPU device
    opt, sched = task.configure_optimizers()
    start, best, partial = trainer._restore(tmp_path / "last.pt", net, opt, sched,
                                            torch.amp.GradScaler("cuda", enabled=False))
    assert seen == [("cpu", torch.uint8)] and start == 1 and partial == (0, 0.0, 0)
    assert next(net.parameters()).device.type == "cpu"


def test_a_checkpoint_write_killed_midway_leaves_the_previous_last_pt_intact(tmp_path):
    """Atomic writes: a temp file + rename, so a SIGKILL during a (background) write never corrupts last.pt."""
    import subprocess
    import sys
    import time

    from medops.engine.trainer import _atomic_save

    _atomic_save({"model": {"w": torch.ones(3)}, "epoch": 1}, tmp_path / "last.pt")
    code = ("import torch; from medops.engine.trainer import _CheckpointWriter; w = _CheckpointWriter(True); "
            f"w.save({{'model': {{'w': torch.zeros(80_000_000)}}, 'epoch': 2}}, __import__('pathlib').Path({str(tmp_path / 'last.pt')!r})); "
            "w.wait()")
    p = subprocess.Popen([sys.executable, "-c", code])
    t0 = time.time()
    while not (tmp_path / "last.pt.tmp").exists() and p.poll() is None and time.time() - t0 < 60:
        time.sleep(0.01)
    p.kill()
    p.wait()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_balanced_sampler_draws_each_class_equally_and_the_same_order_on_both_paths(tmp_path):
    """sampler: balanced — an imbalanced training set (1 positive in 10) is drawn with both classes about
    equally often, the order is a function of (seed, epoch) whatever path holds the data, and a dataset without
    labels is refused with a clear error."""
    from medops.config import TrainConfig
    from medops.errors import ConfigError

    class DS(torch.utils.data.Dataset):
        def __init__(self, n, pos):
            self.labels = torch.tensor([1] * pos + [0] * (n - pos))

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return torch.zeros(1), self.labels[i], i

    class Task:
        net = torch.nn.Linear(1, 2)

    cfg = TrainConfig(batch_size=10, sampler="balanced", seed=3, precision="fp32")
    tr = Trainer(Task(), cfg, tmp_path, progress=False, device=torch.device("cpu"))
    ds = DS(400, 40)
    order = tr._order(ds, epoch=0)
    share = float(ds.labels[order].float().mean())
    assert 0.4 < share < 0.6                                  # random sampling would give 0.1
    assert torch.equal(order, tr._order(ds, epoch=0)) and not torch.equal(order, tr._order(ds, epoch=1))
    loader = [int(i) for b in tr._loader(ds, 0) for i in b[2]]
    assert loader == order.tolist()
    plain = Trainer(Task(), dataclasses.replace(cfg, sampler="random"), tmp_path, progress=False,
                    device=torch.device("cpu"))
    assert sorted(plain._order(ds, epoch=0).tolist()) == list(range(400))   # a permutation
    ds.labels = None
    with pytest.raises(ConfigError, match="train.sampler"):
        tr._order(ds, epoch=0)


def test_previous_loss_step_decays_only_after_a_worse_or_equal_epoch():
    """Paper 003 Eq. 5: lr x beta when val_loss >= the previous epoch's (not the best epoch's)."""
    from medops.engine.trainer import PreviousLossStep

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PreviousLossStep(opt, gamma=0.5)
    lrs = []
    for loss in (1.0, 0.8, 0.9, 0.85, 0.85, 0.5):
        sched.step(loss)
        lrs.append(opt.param_groups[0]["lr"])
    # 0.9 >= 0.8: decay; 0.85 < 0.9: keep (ReduceLROnPlateau would decay: 0.85 > best 0.8); 0.85 >= 0.85: decay
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    again = PreviousLossStep(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.25), gamma=0.5)
    again.load_state_dict(sched.state_dict())
    assert again.previous == 0.5


def test_the_val_loss_scheduler_runs_in_the_trainer_and_resumes_exactly(preprocessed, smoke_cfg, tmp_path):
    cfg = dataclasses.replace(smoke_cfg.family("fusion_seg").train, epochs=3, batch_size=4, seed=5,
                              scheduler="val_loss", gamma=0.5, lr=0.05)
    full, _ = _run(preprocessed, cfg, tmp_path / "a")
    for prev, cur, nxt in zip(full, full[1:], full[2:]):          # epoch e+1's lr follows epoch e's val_loss
        assert nxt["lr"] == pytest.approx(cur["lr"] * (0.5 if cur["val_loss"] >= prev["val_loss"] else 1.0))
    assert full[0]["lr"] == full[1]["lr"] == pytest.approx(0.05)      # no previous loss after the first epoch
    with pytest.raises(Crash):
        _run(preprocessed, cfg, tmp_path / "b", crash_at=(2, 0))
    resumed, _ = _run(preprocessed, cfg, tmp_path / "b", resume=True)
    assert [r["lr"] for r in resumed] == pytest.approx([r["lr"] for r in full])
    assert [r["val_loss"] for r in resumed] == pytest.approx([r["val_loss"] for r in full], abs=1e-6)


def test_the_report_states_the_tolerance_of_the_plateau_rule():
    """A reader of the convergence section sees the rule a cell was held to, tolerance included."""
    from medops.config import AblationConfig
    from medops.experiments.ablation import convergence_note

    plain = convergence_note(AblationConfig(epochs=8, patience=2, cells={"a": {}}), "validation DSC")[0]
    tol = convergence_note(AblationConfig(epochs=8, patience=2, min_delta=0.005, cells={"a": {}}), "validation DSC")[0]
    assert "2 epochs" in plain and "more than" not in plain
    assert "2 epochs by more than 0.005" in tol and "at most 8 epochs" in tol
