"""What DVC costs per stage as its lock file grows, and what a family's own dvc.yaml (own dvc.lock) saves.

DVC loads a stage's whole dvc.lock to check it and rewrites the whole file after running it (ruamel.yaml
round trip, pure Python), so a stage's overhead grows with the number of stages in the same lock. medops
therefore gives every family but the first its own pipeline file (src/medops/families/<family>/dvc.yaml).

The benchmark builds a scratch DVC project whose stages look like medops's ablation stages in the lock (28
file dependencies, ~2 KB of params each) but whose commands do nothing, fills the root lock with
``--others`` already-run stages (another family's, say: entries cloned from a real one), then times
``dvc repro`` of ``--stages`` new stages (a) in the same dvc.yaml and (b) in their own dvc.yaml in a sub-folder.

    python benchmarks/dvc_lock_overhead.py --others 150 --stages 8

``--entries`` measures the other remedy, for the growth *within* one family's lock: ``--others`` ablation stages
already in the lock, then ``--stages`` new ones reproduced, (a) each listing its ~40 code paths and the family's
params (~300 lock lines a stage, as before medops's inputs stages) and (b) depending on one inputs file and its
own cell's params (~30 lines a stage, as now: ``medops inputs``).

    python benchmarks/dvc_lock_overhead.py --entries --others 60 --stages 4
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
# a family's params as its stages record them (~2 KB): per-profile values of model and training settings
PARAMS = {"model": {"channels": {p: [8 * (i + 1) for i in range(5)] for p in ("smoke", "quick", "paper")},
                    "widths": {p: [16, 32, 64, 128] for p in ("smoke", "quick", "paper")},
                    "scales": {p: [12, 18, 24] for p in ("smoke", "quick", "paper")},
                    "dropout": 0.5, "hidden": 486, "arch": "ensemble"},
          "train": {k: {"smoke": 1, "quick": 2, "paper": 3} for k in
                    ("epochs", "batch_size", "lr", "patience", "warmup", "seed", "workers", "clip")}}


def _sh(cmd: list[str] | str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    if r.returncode:
        raise SystemExit(f"{cmd} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def _stage(n_items: int, name: str, wdir: str | None) -> dict:
    st = {"matrix": {"i": list(range(n_items))},
          "cmd": f"mkdir -p out && echo {name} ${{item.i}} > out/{name}-${{item.i}}.txt",
          "deps": [f"src/m{k:02d}.py" for k in range(28)],
          "params": ["model", "train", "cells.c${item.i}"],
          "outs": [f"out/{name}-${{item.i}}.txt"]}
    if wdir:
        st = {"wdir": wdir, **st}
    return st


def build(root: Path, others: int, stages: int) -> None:
    root.mkdir(parents=True)
    _sh("git init -q && dvc init -q", root)
    (root / "src").mkdir()
    for k in range(28):
        (root / f"src/m{k:02d}.py").write_text(f"# module {k}\n" * 40)
    params = {**PARAMS, "cells": {f"c{i}": {"loss": "ce", "scale": "large"} for i in range(max(others, stages))}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"other": _stage(others, "other", None),
                                                              "mine": _stage(stages, "mine", None)}}))
    (root / "fam").mkdir()
    (root / "fam/dvc.yaml").write_text(yaml.safe_dump({"vars": ["../params.yaml"],
                                                       "stages": {"own": _stage(stages, "own", "..")}}))
    _clone_entries(root, "other", others, outputs=False)


def _clone_entries(root: Path, name: str, n: int, *, outputs: bool) -> dict:
    """Run ``name@0`` for real, then fill the lock with copies of its entry for ``name@1`` … ``name@{n-1}``
    (as if they had run; ``outputs``: write their output files too, so they are up to date). Returns the entry."""
    _sh(f"dvc repro {name}@0", root)
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    entry = lock["stages"][f"{name}@0"]
    for i in range(1, n):
        e = copy.deepcopy(entry)
        e["cmd"] = e["cmd"].replace(f"{name} 0", f"{name} {i}").replace(f"{name}-0", f"{name}-{i}")
        e["outs"][0]["path"] = f"out/{name}-{i}.txt"
        lock["stages"][f"{name}@{i}"] = e
        if outputs:
            (root / f"out/{name}-{i}.txt").write_text(f"{name} {i}\n")
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    _sh("git add -A && git commit -qm b", root)
    return entry


def _cell_stage(n: int, deps: list[str], params: list[str]) -> dict:
    return {"matrix": {"i": list(range(n))}, "cmd": "mkdir -p out && echo s ${item.i} > out/s-${item.i}.txt",
            "deps": deps, "params": params + ["cells.c${item.i}"], "outs": ["out/s-${item.i}.txt"]}


def entries(others: int, stages: int, shared: bool) -> dict:
    """Seconds per stage for ``stages`` new ablation stages after ``others`` in the same lock; ``shared``: the
    stages depend on one inputs file instead of their 40 code paths and the family's params."""
    root = Path(tempfile.mkdtemp(prefix="medops-dvclock-")) / "proj"
    try:
        root.mkdir(parents=True)
        _sh("git init -q && dvc init -q", root)
        (root / "src").mkdir()
        for k in range(40):
            (root / f"src/m{k:02d}.py").write_text(f"# module {k}\n" * 40)
        (root / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "cells": {
            f"c{i}": {"loss": "ce", "scale": "large"} for i in range(others + stages)}}))
        code = [f"src/m{k:02d}.py" for k in range(40)]
        (root / "inputs.json").write_text("{}\n")
        st = _cell_stage(others + stages, ["inputs.json"], []) if shared else _cell_stage(others + stages, code, ["model", "train"])
        (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": st}}))
        first = _clone_entries(root, "s", others, outputs=True)
        lines = len((root / "dvc.lock").read_text().splitlines())
        t = time.perf_counter()
        _sh(["dvc", "repro", *[f"s@{i}" for i in range(others, others + stages)]], root)
        return {"lock_lines": lines, "lines_per_stage": len(yaml.safe_dump(first).splitlines()),
                "s_per_stage": round((time.perf_counter() - t) / stages, 2)}
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


def time_repro(root: Path, target: str) -> float:
    t = time.perf_counter()
    _sh(["dvc", "repro", target], root)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--others", type=int, default=150, help="stages already in the root dvc.lock")
    ap.add_argument("--stages", type=int, default=8, help="stages reproduced in each variant")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--entries", action="store_true", help="per-stage lock entries: 40 code paths vs one inputs file")
    a = ap.parse_args()
    if a.entries:
        first = {v: entries(1, a.stages, v == "inputs_file") for v in ("code_paths", "inputs_file")}
        last = {v: entries(a.others, a.stages, v == "inputs_file") for v in ("code_paths", "inputs_file")}
        res = {"stages_timed": a.stages, "after_1_stage": first, f"after_{a.others}_stages": last}
        print(json.dumps(res, indent=2))
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(res, indent=2))
        return
    tmp = Path(tempfile.mkdtemp(prefix="medops-dvclock-"))
    try:
        root = tmp / "proj"
        build(root, a.others, a.stages)
        lock_kb = (root / "dvc.lock").stat().st_size / 1024
        same = time_repro(root, "mine")                          # the root lock holds the others too
        own = time_repro(root, "fam/dvc.yaml:own")                # own lock: only these stages
        res = {"others_in_root_lock": a.others, "root_lock_kb": round(lock_kb, 1), "stages": a.stages,
               "same_lock_s_per_stage": round(same / a.stages, 2), "own_lock_s_per_stage": round(own / a.stages, 2),
               "ratio": round(same / own, 2)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
