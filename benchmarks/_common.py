"""Shared set-up for benchmarks: a small preprocessed dataset in a temp folder."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from medops.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def prepared(profile: str = "quick", n_cases: int = 64):
    from medops.data.breast_trimodal import generate
    from medops.preprocess.breast_trimodal import preprocess_dataset

    cfg = load_config(ROOT / "params.yaml", profile=profile)
    tmp = Path(tempfile.mkdtemp(prefix="medops-bench-"))
    generate(dataclasses.replace(cfg.generate, n_cases=n_cases), cfg.split, tmp / "raw", progress=False)
    preprocess_dataset(tmp / "raw", tmp / "pre", cfg.preprocess, progress=False)
    return cfg, tmp / "pre"


def copy_project(dst: Path) -> Path:
    """Copy the committed project files to ``dst`` (a fresh workspace for a timed run)."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    return dst


def fresh_project(prefix: str, profile: str) -> tuple[Path, dict]:
    """A fresh copy of the committed project in a temp folder (``<tmp>/medops``), made a git repository and set to
    ``profile``, and the environment to run its commands in: this venv's ``bin`` first, the copy's own ``src``
    imported (editing the working tree meanwhile does not change what is timed), no outside MLflow server."""
    import os
    import subprocess
    import sys

    dst = Path(tempfile.mkdtemp(prefix=prefix)) / "medops"
    copy_project(dst)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(dst / "src"),
           "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run("git init -q && git add -A && git commit -qm b", cwd=dst, shell=True, check=True, env=env)
    subprocess.run(["medops", "profile", profile], cwd=dst, check=True, env=env, capture_output=True)
    return dst, env


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def step_rates(net, x, y, loss_fn, params, device, steps: int = 3) -> tuple[float, float]:
    """Samples/s of one optimiser step (Adam over ``params``) and of a forward pass, for a batch ``x``, ``y``
    already on ``device``: one warm-up, then ``steps`` timed (fp16 autocast on CUDA)."""
    import time

    import torch

    opt = torch.optim.Adam(params, 1e-4)
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    net.train()
    step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train = steps * len(x) / (time.perf_counter() - t)
    net.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        net(x)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            net(x)
        sync()
    return train, steps * len(x) / (time.perf_counter() - t)


def add_ratios(rows: dict, key: str, ref: str, name: str) -> dict:
    """``rows[*][name] = rows[*][key] / rows[ref][key]``: the comparable number of a one-run benchmark."""
    for r in rows.values():
        r[name] = round(r[key] / rows[ref][key], 2)
    return rows
