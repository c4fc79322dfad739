"""The GPU check: one script, <= 5 min on one H200, needing only torch, torchvision, MONAI and safetensors.

On the GPU machine (no network, no MONAI): `make gpu-wheels` here puts the wheels in `.whl/`, then

    pip install --no-index --no-deps --target /tmp/pydeps .whl/*.whl
    PYTHONPATH=src:/tmp/pydeps python3 benchmarks/gpu.py --out "$OUT"

Checks the CUDA path (fit; SIGTERM mid-epoch then resume = the uninterrupted history; evaluate; predict
through the safe model format) and measures: engine ÷ bare loop, each precision policy, MFU, the share of
batch assembly, checkpoint cost, concurrent cells on one GPU, the paper-profile epoch time per family and
the ablation estimates. Writes ``gpu.json`` and prints a table. ``--smoke`` runs the same code on the CPU at
toy sizes (what the test suite does); its numbers mean nothing.

Data: images with the shapes of the paper profiles (simulated blobs the net can learn), generated on the
device — speed depends on shapes, not on content; the CUDA-path check trains to a real Dice.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medops.config import TrainConfig  # noqa: E402
from medops.engine import Trainer  # noqa: E402
from medops.engine.resident import ResidentDataset  # noqa: E402
from medops.models import get_model  # noqa: E402
from medops.tasks.classification import ClassificationTask  # noqa: E402
from medops.tasks.segmentation import SegmentationTask  # noqa: E402


def paper(value):
    return value.get("paper", value) if isinstance(value, dict) else value


PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


class Blobs(ResidentDataset):
    """``n`` three-channel images with an elliptic lesion (brighter in every channel, noisy) and its mask."""

    def __init__(self, n: int, size: int, seed: int, device, labels: bool = False):
        g = torch.Generator(device="cpu").manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        c = torch.rand(n, 2, generator=g) * 1.0 - 0.5
        r = torch.rand(n, 2, generator=g) * 0.25 + 0.1
        m = (((xx - c[:, :1, None]) / r[:, :1, None]) ** 2 + ((yy - c[:, 1:, None]) / r[:, 1:, None]) ** 2) <= 1
        present = torch.rand(n, generator=g) < (0.5 if labels else 1.0)
        m = m & present[:, None, None]
        x = 0.3 + 0.35 * m[:, None].float() + 0.15 * torch.randn(n, 3, size, size, generator=g)
        self.images, self.masks = x.half().to(device), m[:, None].to(torch.uint8).to(device)
        self.labels = present.long().to(device)
        self.as_labels = labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float(), (self.labels[i] if self.as_labels else self.masks[i].float()), i

    def resident_tensors(self):
        return {"images": self.images, "masks": self.masks, "labels": self.labels}

    def resident_batch(self, t, idx):
        return [t["images"][idx].float(), t["labels"][idx] if self.as_labels else t["masks"][idx].float(), idx]


def seg_cfg(**kw) -> TrainConfig:
    t = PARAMS["fusion_seg"]["train"]
    base = TrainConfig(optimizer=t["optimizer"], lr=paper(t["lr"]), batch_size=t["batch_size"], epochs=1,
                       loss=t["loss"], scheduler="none", seed=1, monitor="val_dice", nonfinite_check_every=64)
    return replace(base, **kw)


def seg_net(channels):
    torch.manual_seed(0)
    return get_model("fusion_seg", channels=tuple(channels), residual_subunits=2)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_epoch(net, cfg, train, val, device, out) -> float:
    """Seconds of one training epoch through the Trainer (its validation timed and taken off)."""
    trainer = Trainer(SegmentationTask(net, cfg), cfg, out, progress=False, device=device)
    sync(device)
    t0 = time.perf_counter()
    trainer.fit(train, val)
    sync(device)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.validate(val)
    sync(device)
    return total - (time.perf_counter() - t0)


def bare_epoch(net, cfg, train, device) -> float:
    """The same epoch as a bare loop with the same policy: resident batches, autocast, fused Adam."""
    from medops.engine.policy import resolve_policy

    pol = resolve_policy(cfg, device, net)
    net.to(device)
    if pol.memory_format is not None:
        net.to(memory_format=pol.memory_format)
    task = SegmentationTask(net, cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=device.type == "cuda" or None)
    scaler = torch.amp.GradScaler(device.type, enabled=pol.grad_scaler)
    order = torch.randperm(len(train), device=device)
    n = len(order) // cfg.batch_size * cfg.batch_size
    sync(device)
    t0 = time.perf_counter()
    for s in range(0, n, cfg.batch_size):
        x, y, i = train.resident_batch(train.resident_tensors(), order[s:s + cfg.batch_size])
        if pol.memory_format is not None:
            x = x.contiguous(memory_format=pol.memory_format)
        with pol.autocast(device):
            loss = task.train_step([x, y, i])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    sync(device)
    return time.perf_counter() - t0


def flops_per_step(net, cfg, batch, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    task = SegmentationTask(net, cfg).to(device)
    with FlopCounterMode(display=False) as fc:
        task.train_step(batch).backward()
    net.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def matmul_peak(device, n: int) -> float:
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- sections
def cuda_path(S, device, tmp: Path) -> dict:
    """fit -> SIGTERM mid-epoch -> resume == uninterrupted (within the precision's tolerance) -> evaluate ->
    predict through safetensors; and the quick profile: bf16 within 0.01 Dice of fp32."""
    from medops.engine.trainer import Preempted
    from medops.tracking.models import load_safe_model_dir, save_safe_model_dir

    train, val, test = (Blobs(S["n_quick"], S["quick_size"], s, device) for s in (1, 2, 3))
    ch = S["quick_channels"]
    res = {}
    for prec in ("fp32", "auto"):
        cfg = seg_cfg(epochs=S["quick_epochs"], lr=2e-3, scheduler="cosine", precision=prec)
        t0 = time.perf_counter()
        hist = Trainer(SegmentationTask(seg_net(ch), cfg), cfg, tmp / f"q-{prec}", progress=False,
                       device=device).fit(train, val)
        res[f"quick_{prec}_val_dice"] = round(hist[-1]["val_dice"], 4)
        res[f"quick_{prec}_s"] = round(time.perf_counter() - t0, 1)
    res["quick_auto_minus_fp32"] = round(res["quick_auto_val_dice"] - res["quick_fp32_val_dice"], 4)
    res["quality_ok"] = abs(res["quick_auto_minus_fp32"]) <= 0.01

    cfg = seg_cfg(epochs=3, lr=2e-3, scheduler="cosine")
    full = Trainer(SegmentationTask(seg_net(ch), cfg), cfg, tmp / "full", progress=False, device=device).fit(train, val)
    steps = len(train) // cfg.batch_size

    def term(event, info):
        if event == "train_batch_end" and (info["epoch"], info["step"]) == (1, steps // 2):
            os.kill(os.getpid(), signal.SIGTERM)
    try:
        Trainer(SegmentationTask(seg_net(ch), cfg), cfg, tmp / "cut", progress=False, device=device,
                callbacks=[term]).fit(train, val)
        res["sigterm"] = "not raised"
    except Preempted as exc:
        res["sigterm"] = str(exc)
    net = seg_net(ch)
    trainer = Trainer(SegmentationTask(net, cfg), cfg, tmp / "cut", progress=False, device=device)
    resumed = trainer.fit(train, val, resume=True)
    res["resume_max_abs_diff_val_dice"] = round(max(abs(a["val_dice"] - b["val_dice"]) for a, b in zip(full, resumed)), 5)
    res["resume_epochs"] = [len(full), len(resumed)]
    res["test_dice"] = round(trainer.validate(test)["val_dice"], 4)
    save_safe_model_dir(net.cpu(), torch.nn.Sigmoid(), tmp / "model")
    model = load_safe_model_dir(tmp / "model").to(device)
    x, y, _ = test.resident_batch(test.resident_tensors(), torch.arange(4, device=device))
    with torch.no_grad():
        pred = model(x) >= 0.5
    res["predict_dice_4_cases"] = round(float(2 * (pred & (y > 0)).sum() / (pred.sum() + (y > 0).sum())), 4)
    return res


def policies(S, device, tmp: Path) -> dict:
    """fusion_seg paper model, batch 8: samples/s through the engine for each policy; engine ÷ bare; MFU."""
    ch = paper(PARAMS["fusion_seg"]["model"]["channels"])[: S["depth"]]
    train, val = Blobs(S["n_epoch"], S["size"], 1, device), Blobs(8, S["size"], 2, device)
    runs = [("fp32", dict(precision="fp32", channels_last=False)),
            ("fp16+scaler", dict(precision="fp16" if device.type == "cuda" else "fp32", channels_last=False)),
            ("bf16", dict(precision="bf16", channels_last=False)),
            ("bf16+channels_last", dict(precision="bf16", channels_last=True)),
            ("auto", dict(precision="auto"))]
    if S["compile"]:
        runs.append(("auto+compile", dict(precision="auto", compile=True)))
    out = {"batch": 8, "size": S["size"], "channels": ch, "samples_per_epoch": len(train)}
    for name, kw in runs:
        cfg = seg_cfg(**kw)
        net = seg_net(ch)
        try:
            t0 = time.perf_counter()
            engine_epoch(net, cfg, train, val, device, tmp / name)   # warm-up (cuDNN autotune, compile)
            warm = time.perf_counter() - t0
            t = statistics.median(engine_epoch(net, cfg, train, val, device, tmp / name) for _ in range(S["rounds"]))
            out[name] = {"samples_per_s": round(len(train) // 8 * 8 / t, 1), "warmup_s": round(warm, 1)}
        except Exception as exc:  # noqa: BLE001  (e.g. torch.compile without a working Triton)
            out[name] = {"samples_per_s": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    cfg = seg_cfg(precision="auto")
    net = seg_net(ch)
    bare_epoch(net, cfg, train, device)
    eng, bare = [], []
    for _ in range(S["rounds"]):  # alternate, so drift hits both
        eng.append(engine_epoch(net, cfg, train, val, device, tmp / "ratio"))
        bare.append(bare_epoch(net, cfg, train, device))
    out["engine_over_bare"] = round(statistics.median(eng) / statistics.median(bare), 3)
    x, y, i = train.resident_batch(train.resident_tensors(), torch.arange(8, device=device))
    from medops.engine.policy import resolve_policy

    with resolve_policy(cfg, device, net).autocast(device):
        flops = flops_per_step(net.to(device), cfg, [x, y, i], device)
    peak = matmul_peak(device, S["matmul_n"])
    sps = out["auto"]["samples_per_s"]
    out.update(flops_per_step=flops, matmul_peak_tflops=round(peak / 1e12, 1),
               mfu=round(flops / 8 * sps / peak, 4))
    # batch assembly (resident indexing) alone vs a training epoch
    t0 = time.perf_counter()
    for s in range(0, len(train) // 8 * 8, 8):
        train.resident_batch(train.resident_tensors(), torch.arange(s, s + 8, device=device))
    sync(device)
    out["batch_assembly_share"] = round((time.perf_counter() - t0) / (len(train) // 8 * 8 / sps), 4)
    return out


def checkpoint_cost(S, device, tmp: Path) -> dict:
    from medops.engine.trainer import _atomic_save, _CheckpointWriter

    net = seg_net(paper(PARAMS["fusion_seg"]["model"]["channels"])[: S["depth"]]).to(device)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 3, S["size"], S["size"], device=device)).mean().backward()
    opt.step()
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}
    sync(device)
    t0 = time.perf_counter()
    _atomic_save(state, tmp / "sync.pt")
    sync_s = time.perf_counter() - t0
    w = _CheckpointWriter(background=True)
    t0 = time.perf_counter()
    w.save(state, tmp / "async.pt")
    blocking = time.perf_counter() - t0
    w.wait()
    return {"last_pt_mb": round((tmp / "sync.pt").stat().st_size / 2**20, 1), "synchronous_write_s": round(sync_s, 3),
            "background_blocking_s": round(blocking, 3)}


def worker(steps: int, size: int, depth: int) -> None:
    """One concurrent cell: ``steps`` optimiser steps of the paper model; prints its stepping window."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ch = paper(PARAMS["fusion_seg"]["model"]["channels"])[:depth]
    cfg = seg_cfg(precision="auto")
    train = Blobs(steps * 8, size, 1, device)
    net = seg_net(ch)
    bare_epoch(net, cfg, Blobs(16, size, 2, device), device)  # warm-up
    t0 = time.time()
    bare_epoch(net, cfg, train, device)
    print(json.dumps({"start": t0, "end": time.time(), "samples": steps * 8}))


def concurrent(S) -> dict:
    """N processes training at once on one GPU: total samples/s ÷ one process's."""
    out = {}
    for n in S["concurrency"]:
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(S["worker_steps"]), str(S["size"]),
                                   str(S["depth"])], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        rec = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        span = max(r["end"] for r in rec) - min(r["start"] for r in rec)
        out[n] = round(sum(r["samples"] for r in rec) / span, 1)
    base = out[S["concurrency"][0]]
    return {"samples_per_s": out, "gain": {n: round(v / base, 2) for n, v in out.items()}}


def transfer_cls(S, device, tmp: Path) -> dict:
    """Each backbone at the paper's size and batch: images/s of a training step under auto precision."""
    t = PARAMS["transfer_cls"]["train"]
    out = {}
    for bb in S["backbones"]:
        cfg = replace(seg_cfg(), batch_size=t["batch_size"], loss="ce", monitor="val_loss", precision="auto")
        size = 299 if bb == "inception_v3" and device.type == "cuda" else S["cls_size"]
        train, val = Blobs(S["cls_n"], size, 1, device, labels=True), Blobs(8, size, 2, device, labels=True)
        torch.manual_seed(0)
        net = get_model("transfer_cls", backbone=bb, num_classes=2, weights="none")
        trainer = Trainer(ClassificationTask(net, cfg, dataset=train), cfg, tmp / bb, progress=False, device=device)
        trainer.fit(train, val)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        trainer.fit(train, val)
        sync(device)
        out[bb] = round(len(train) // cfg.batch_size * cfg.batch_size / (time.perf_counter() - t0), 1)
    return out


def estimates(pol: dict, cls: dict, conc: dict) -> dict:
    """Paper-profile epoch times and ablation wall times from the measured throughputs."""
    ab, fs = PARAMS["ablation"], PARAMS["fusion_seg"]
    frac = PARAMS["split"]["fractions"]
    n = paper(PARAMS["generate"]["n_cases"])
    train_n, val_n = int(n * frac["train"]), int(n * frac["val"])
    sps = pol["auto"]["samples_per_s"]
    epoch_s = (train_n + val_n / 3) / sps                       # inference ~ 1/3 of a training step
    runs = len(ab["fusion_seg"]["cells"]) * len(ab["fusion_seg"]["seeds"])
    gain = max(conc["gain"].values()) if conc else 1.0
    out = {"fusion_seg": {"epoch_s": round(epoch_s, 1), "runs": runs, "epochs": paper(ab["fusion_seg"]["epochs"]),
                          "ablation_h_one_at_a_time": round(runs * paper(ab["fusion_seg"]["epochs"]) * epoch_s / 3600, 2),
                          "ablation_h_concurrent": round(runs * paper(ab["fusion_seg"]["epochs"]) * epoch_s / 3600 / gain, 2),
                          "main_h": round(paper(fs["train"]["epochs"]) * epoch_s / 3600, 2)}}
    tc = ab["transfer_cls"]
    sets = PARAMS["rare_disease"]["datasets"]
    per_set = statistics.mean(paper(v["n_cases"]) for k, v in sets.items() if k != "rare-source")
    cells = len(tc["cells"]) * len(tc["seeds"])
    ips = statistics.mean(cls.values()) if cls else float("nan")
    ep = (per_set * frac["train"] + per_set * frac["val"] / 3) / ips
    out["transfer_cls"] = {"epoch_s_mean_backbone": round(ep, 2), "runs": cells, "epochs": paper(tc["epochs"]),
                           "ablation_h_one_at_a_time": round(cells * paper(tc["epochs"]) * ep / 3600, 2)}
    return out


SIZES = {
    "gpu": dict(n_quick=160, quick_size=128, quick_channels=[16, 32, 64, 128], quick_epochs=25, n_epoch=256, size=256,
                depth=5, rounds=3, compile=True, matmul_n=8192, worker_steps=48, concurrency=[1, 2, 4],
                backbones=["vgg16", "resnet50", "densenet201", "inception_v3"], cls_size=224, cls_n=256),
    "smoke": dict(n_quick=24, quick_size=32, quick_channels=[4, 8], quick_epochs=3, n_epoch=16, size=32, depth=2,
                  rounds=1, compile=False, matmul_n=256, worker_steps=2, concurrency=[1, 2],
                  backbones=["resnet50"], cls_size=64, cls_n=64),
}


def table(res: dict) -> str:
    p = res["policies"]
    rows = [("device", res["device"]), ("CUDA path: SIGTERM -> resume, max |Δ val Dice|", p and res["cuda_path"]["resume_max_abs_diff_val_dice"]),
            ("quick profile val Dice fp32 / auto", f"{res['cuda_path']['quick_fp32_val_dice']} / {res['cuda_path']['quick_auto_val_dice']}"),
            *((f"fusion_seg paper model, batch 8, {k} (samples/s)", v["samples_per_s"]) for k, v in p.items() if isinstance(v, dict)),
            ("engine ÷ bare loop (auto)", p["engine_over_bare"]), ("MFU (auto)", p["mfu"]),
            ("batch assembly share", p["batch_assembly_share"]),
            ("last.pt MB / sync write s / background blocking s", "{last_pt_mb} / {synchronous_write_s} / {background_blocking_s}".format(**res["checkpoint"])),
            ("concurrent cells gain (N: ×)", res["concurrent"]["gain"]),
            *((f"transfer_cls {k} (images/s)", v) for k, v in res["transfer_cls"].items()),
            ("fusion_seg paper ablation (h, one at a time / concurrent)", f"{res['estimates']['fusion_seg']['ablation_h_one_at_a_time']} / {res['estimates']['fusion_seg']['ablation_h_concurrent']}"),
            ("transfer_cls paper ablation (h, one at a time)", res["estimates"]["transfer_cls"]["ablation_h_one_at_a_time"]),
            ("total wall time (s)", res["wall_s"])]
    return "\n".join(f"| {k} | {v} |" for k, v in rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, toy sizes: checks the script, not the GPU")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(*a.worker)
    device = torch.device("cpu" if a.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not a.smoke:
        sys.exit("no CUDA device: run with --smoke to check the script on the CPU")
    S = SIZES["smoke" if a.smoke else "gpu"]
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="medops-gpu-"))
    res = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
           "torch": torch.__version__}
    for name, fn in (("cuda_path", lambda: cuda_path(S, device, tmp)), ("policies", lambda: policies(S, device, tmp)),
                     ("checkpoint", lambda: checkpoint_cost(S, device, tmp)), ("concurrent", lambda: concurrent(S)),
                     ("transfer_cls", lambda: transfer_cls(S, device, tmp))):
        s0 = time.perf_counter()
        try:  # one failing section must not lose the others' numbers (the device time is short)
            res[name] = fn()
        except Exception as exc:  # noqa: BLE001
            res[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            res.setdefault("errors", []).append(name)
        print(f"{name}: {time.perf_counter() - s0:.1f} s  {json.dumps(res[name])}", flush=True)
    try:
        res["estimates"] = estimates(res["policies"], res["transfer_cls"], res["concurrent"])
    except Exception as exc:  # noqa: BLE001  (a section it needs failed)
        res["estimates"] = {"error": repr(exc)[:300]}
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    shutil.rmtree(tmp, ignore_errors=True)  # checkpoints and timing runs: nothing a reader needs
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / ("gpu_smoke.json" if a.smoke else "gpu.json")).write_text(json.dumps(res, indent=2, default=str))
    try:
        print(table(res))
    except Exception:  # noqa: BLE001
        print(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
