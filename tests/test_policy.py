"""The precision and speed policy and data resident on the device (issue 11), on the CPU."""

import dataclasses
import logging

import pandas as pd
import pytest
import torch

from conftest import ROOT
from medops.config import SplitConfig, load_config
from medops.data.dataset import ClassificationDataset, SegmentationShardDataset
from medops.engine import Trainer, load_checkpoint
from medops.engine import policy as policy_mod
from medops.engine.policy import resolve_policy
from medops.errors import ConfigError
from medops.models import get_model
from medops.tasks.segmentation import SegmentationTask

CPU = torch.device("cpu")


def _seg(pre):
    idx = pd.read_parquet(pre / "index.parquet")
    return SegmentationShardDataset(pre, idx, "train"), SegmentationShardDataset(pre, idx, "val")


def _fit(pre, cfg, out, *, resume=False, events=None):
    tr, va = _seg(pre)
    torch.manual_seed(0)
    net = get_model("fusion_seg", channels=(4, 8))
    cbs = [lambda e, i: events.append((e, i))] if events is not None else []
    trainer = Trainer(SegmentationTask(net, cfg), cfg, out, progress=False, device=CPU, callbacks=cbs)
    return trainer.fit(tr, va, resume=resume), net, trainer


@pytest.fixture
def cfg(smoke_cfg):
    return dataclasses.replace(smoke_cfg.family("fusion_seg").train, epochs=2, batch_size=4, seed=5)


def test_auto_is_fp32_and_channels_last_on_the_cpu_and_the_resolved_policy_is_reported(preprocessed, cfg, tmp_path):
    events = []
    _, net, trainer = _fit(preprocessed, cfg, tmp_path, events=events)
    engine = dict(events)["engine"]
    assert engine["engine.precision"] == "fp32" and engine["engine.data"] == "device"
    assert engine["engine.channels_last"] == "true" and engine["engine.compile"] == "false"
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)     # measured faster on the CPU too
    assert load_checkpoint(tmp_path / "last.pt")["precision"] == "fp32"


def test_auto_picks_bf16_on_a_gpu_with_it_and_fp16_with_a_grad_scaler_on_an_older_one(monkeypatch):
    gpu = torch.device("cuda", 0)
    net = get_model("fusion_seg", channels=(4, 8))
    cfg = load_config(ROOT / "params.yaml", profile="smoke").family("fusion_seg").train
    monkeypatch.setattr(policy_mod, "bf16_supported", lambda d: True)
    p = resolve_policy(cfg, gpu, net)
    assert (p.precision, p.grad_scaler, p.channels_last, p.fused_optimizer) == ("bf16", False, True, True)
    assert p.memory_format == torch.channels_last
    monkeypatch.setattr(policy_mod, "bf16_supported", lambda d: False)
    p = resolve_policy(cfg, gpu, net)
    assert (p.precision, p.grad_scaler) == ("fp16", True)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert resolve_policy(cfg, gpu, mlp).memory_format is None      # channels_last is for conv nets only


def test_bad_input_bf16_on_a_device_without_it_names_the_device_and_the_choices(cfg, monkeypatch):
    monkeypatch.setattr(policy_mod, "bf16_supported", lambda d: False)
    with pytest.raises(ConfigError) as e:
        resolve_policy(dataclasses.replace(cfg, precision="bf16"), CPU)
    msg = str(e.value)
    assert "train.precision" in msg and "bf16 is not supported on device cpu" in msg
    assert "auto" in msg and "fp16" in msg and "fp32" in msg
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_policy(dataclasses.replace(cfg, precision="fp16"), CPU)


def test_bad_input_precision_typo_in_params_names_the_choices(tmp_path):
    import shutil

    from conftest import edit_params

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    edit_params(params, lambda p: p["fusion_seg"]["train"].update(precision="bf-16"))
    with pytest.raises(ConfigError, match="precision.*one of \\['auto', 'fp32', 'bf16', 'fp16'\\]"):
        load_config(params, profile="smoke")


def test_bad_input_a_checkpoint_of_another_precision_is_refused_naming_both(preprocessed, cfg, tmp_path):
    _fit(preprocessed, cfg, tmp_path)                                       # fp32 on the CPU
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ConfigError) as e:
        _fit(preprocessed, dataclasses.replace(cfg, precision="bf16"), tmp_path, resume=True)
    assert "'fp32'" in str(e.value) and "'bf16'" in str(e.value) and "without --resume" in str(e.value)
    assert (tmp_path / "last.pt").read_bytes() == before                  # nothing produced is lost


def test_resident_data_and_the_dataloader_give_the_same_run(preprocessed, cfg, tmp_path, caplog):
    """Held on the device or loaded batch by batch, the (seed, epoch) order and every batch are the same: a
    dataset over the device share falls back to the DataLoader (logged) and trains identically."""
    ev_a, ev_b = [], []
    a, net_a, _ = _fit(preprocessed, cfg, tmp_path / "a", events=ev_a)
    with caplog.at_level(logging.WARNING, logger="medops.engine"):
        b, net_b, _ = _fit(preprocessed, dataclasses.replace(cfg, device_data_share=1e-12), tmp_path / "b",
                           events=ev_b)
    assert dict(ev_a)["engine"]["engine.data"] == "device" and dict(ev_b)["engine"]["engine.data"] == "loader"
    assert "larger than train.device_data_share" in caplog.text
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss", "val_dice"):
            assert ra[k] == rb[k], (k, ra, rb)
    for (k, va), vb in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_resident_augmentation_draws_what_the_loader_draws(tmp_path, smoke_cfg):
    """transfer_cls augments on device tensors, case by case in batch order: the same random affine per
    case as the DataLoader path."""
    from medops.data import rare_disease
    from medops.families.transfer_cls.config import Classification2DPreprocessConfig
    from medops.preprocess.classification_2d import preprocess_classification

    split = SplitConfig(seed=7, fractions={"train": 0.7, "val": 0.15, "test": 0.15})
    rare_disease.generate("nf-mri", 24, 0.3, 64, 3, split, tmp_path / "raw", progress=False)
    idx = preprocess_classification(tmp_path / "raw", tmp_path / "pre", Classification2DPreprocessConfig(image_size=32),
                                    progress=False)
    ds = ClassificationDataset(tmp_path / "pre", idx, "train", augment={"rotation_deg": 15, "zoom": 0.1, "hflip": True})
    tcfg = dataclasses.replace(smoke_cfg.family("fusion_seg").train, batch_size=4, seed=9)
    trainer = Trainer(SegmentationTask(get_model("fusion_seg", channels=(4, 8)), tcfg), tcfg, tmp_path / "t",
                      progress=False, device=CPU)
    got = {}
    for mode in ("device", "loader"):
        from medops.engine import resident

        trainer._resident = {id(ds): resident.to_device(ds, CPU)} if mode == "device" else {}
        torch.manual_seed(123)
        got[mode] = list(trainer._batches(ds, epoch=2))
    assert len(got["device"]) == len(got["loader"]) == len(ds) // 4
    for bd, bl in zip(got["device"], got["loader"]):
        assert torch.equal(bd[0], bl[0]) and torch.equal(bd[1], bl[1]) and torch.equal(bd[2], bl[2])
    assert not torch.equal(got["device"][0][0], ds.images[got["device"][0][2]].float())   # it did augment


def test_channels_last_runs_on_the_cpu_and_matches_the_default_layout(preprocessed, cfg, tmp_path):
    a, net_a, _ = _fit(preprocessed, dataclasses.replace(cfg, channels_last=False), tmp_path / "a")
    b, net_b, _ = _fit(preprocessed, dataclasses.replace(cfg, channels_last=True), tmp_path / "b")
    conv_a = next(m for m in net_a.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv_a.weight.is_contiguous()                                     # false: the default layout
    conv = next(m for m in net_b.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for ra, rb in zip(a, b):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["val_dice"] == pytest.approx(rb["val_dice"], abs=1e-3)


@pytest.mark.slow
def test_bf16_autocast_reaches_fp32_quality_within_0_01(tmp_path, smoke_cfg):
    """Same data, seeds and schedule, trained to a plateau (40 epochs, 48 cases at 64²): bf16 autocast ends
    within 0.01 Dice of fp32 (measured: 0.9313 vs 0.9377 final, 0.9329 vs 0.9402 best; CPU bf16 is ~6x
    slower here, so the quick profile itself is compared on the GPU by benchmarks/gpu.py)."""
    from medops.data.breast_trimodal import generate
    from medops.preprocess.breast_trimodal import preprocess_dataset

    generate(dataclasses.replace(smoke_cfg.generate, n_cases=48, workers=2), smoke_cfg.split, tmp_path / "raw",
             progress=False)
    preprocess_dataset(tmp_path / "raw", tmp_path / "pre", dataclasses.replace(smoke_cfg.preprocess, workers=2),
                       progress=False)
    tr, va = _seg(tmp_path / "pre")
    hist = {}
    for prec in ("fp32", "bf16"):
        tc = dataclasses.replace(smoke_cfg.family("fusion_seg").train, epochs=40, batch_size=8, seed=1, lr=0.01,
                                 precision=prec)
        torch.manual_seed(0)
        net = get_model("fusion_seg", channels=(8, 16, 32))
        hist[prec] = Trainer(SegmentationTask(net, tc), tc, tmp_path / prec, progress=False, device=CPU).fit(tr, va)
    final = {p: h[-1]["val_dice"] for p, h in hist.items()}
    best = {p: max(r["val_dice"] for r in h) for p, h in hist.items()}
    assert final["fp32"] > 0.85, final                                  # trained: the comparison means something
    assert abs(final["bf16"] - final["fp32"]) <= 0.01, final
    assert abs(best["bf16"] - best["fp32"]) <= 0.01, best


@pytest.mark.slow
def test_the_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    """benchmarks/gpu.py is run once on a lent GPU: its --smoke mode (CPU, toy sizes) keeps it working, and
    on the GPU machine it needs nothing the project does not carry (no MLflow, SimpleITK, OpenCV)."""
    import json
    import subprocess
    import sys

    absent = ("mlflow", "SimpleITK", "cv2", "great_expectations", "dvc", "airflow")   # not on the GPU machine
    code = ("import runpy, sys; sys.modules.update(dict.fromkeys(%r)); "
            "sys.argv = ['gpu.py', '--smoke', '--out', %r]; runpy.run_path('benchmarks/gpu.py', run_name='__main__')"
            % (absent, str(tmp_path)))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert "errors" not in res, res
    cp = res["cuda_path"]
    assert cp["sigterm"].startswith("stopped by SIGTERM") and cp["resume_max_abs_diff_val_dice"] == 0.0
    assert cp["resume_epochs"] == [3, 3]
    assert res["policies"]["engine_over_bare"] > 0 and res["checkpoint"]["last_pt_mb"] > 0
    assert set(res["estimates"]) == {"fusion_seg", "transfer_cls"}
