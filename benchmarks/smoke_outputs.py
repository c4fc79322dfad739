"""Record (or compare) the smoke pipeline's outputs of every family, for behaviour-preserving refactors.

    python benchmarks/smoke_outputs.py record  OUT.json   # run the smoke pipeline in a fresh copy, save outputs
    python benchmarks/smoke_outputs.py compare OLD.json NEW.json   # identical? (floats to 1e-6)

What is recorded (CPU, fixed seeds, a reduced ablation of 3 cells x 2 seeds per family so it runs in minutes):
each family's test metrics.json and per_case.csv, the ablation report's tables and claims (CSV), and the
promotion decision (cell, seed, action, gates). Run ids, timestamps and paths are left out.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
CELLS = {"fusion_seg": ["tri_attention", "mri", "concat"], "transfer_cls": ["densenet201", "ce", "scratch"]}
VOLATILE = {"run_id", "parent_run_id", "model_uri", "run", "experiment_id", "artifact_uri", "dataset", "data_docs",
            "version", "champion", "start_time", "end_time", "duration_s"}


def _copy(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _csv(path: Path) -> list[dict]:
    df = pd.read_csv(path)
    df = df[[c for c in df.columns if c not in VOLATILE]]
    return json.loads(df.to_json(orient="records"))


def record(out: Path) -> None:
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="medops-golden-")) / "medops"
    work.mkdir()
    _copy(work)
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["profile"] = "smoke"
    for fam, keep in CELLS.items():
        abl = p["ablation"][fam]
        abl["cells"] = {c: abl["cells"][c] for c in keep}
        abl["seeds"] = [1, 2]
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MEDOPS_IMPORTS_LOG"] = str(out.with_suffix(".imports.jsonl"))  # what each stage's command imported
    out.with_suffix(".imports.jsonl").unlink(missing_ok=True)
    for cmd in ("git init -q", "git add -A", "git -c user.name=t -c user.email=t@x commit -qm init", "dvc repro"):
        t0 = time.time()
        r = subprocess.run(cmd, cwd=work, shell=True, env=env, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{cmd} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
        print(f"{cmd}: {time.time() - t0:.1f} s", flush=True)
    res: dict = {}
    for fam in CELLS:
        rep, abl = work / "reports" / fam, work / "reports/ablation" / fam
        res[fam] = {
            "metrics": _clean(json.loads((rep / "metrics.json").read_text())),
            "per_case": _csv(rep / "per_case.csv"),
            "ablation": {f.name: _csv(f) for f in sorted(abl.glob("*.csv")) if f.name != "cells.csv"},
            "cells": _csv(abl / "cells.csv"),
            "promotion": _clean(json.loads((work / "reports/promotion" / f"{fam}.json").read_text())),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, sort_keys=True, default=str))
    print(f"recorded {out}")


def _diff(a, b, where: str, out: list) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'new' if k in b else 'old'}")
            else:
                _diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} vs {len(b)} rows")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out)
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or not (math.isclose(float(a), float(b), abs_tol=1e-6)
                                          or (math.isnan(float(a)) and math.isnan(float(b)))):
            out.append(f"{where}: {a} vs {b}")
    elif a != b:
        out.append(f"{where}: {a!r} vs {b!r}")


def compare(old: Path, new: Path) -> int:
    diffs: list[str] = []
    _diff(json.loads(old.read_text()), json.loads(new.read_text()), "", diffs)
    for d in diffs[:200]:
        print(d)
    print(f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        record(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["compare"]:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
