"""Warm start (medops.warm) in one run: the same `medops` command cold (a process of its own), forked from a
warm server that preloads the libraries only (torch, MONAI, MLflow, ...: `medops.warm.LIBRARIES`, the preload
before 2026-12-01), and forked from one that also preloads what a tracked command imports on its first MLflow
call (`medops.warm.PRELOAD` = LIBRARIES + STORES, today's). Alternated, in a project whose stages have run
(default: evaluate and one ablation cell of the nodule3d family; `--family fusion_seg`: one ablation cell of
fusion_seg). Prints the mean wall time of each and the ratios; writes benchmarks/results/warm_start.json.

    python benchmarks/warm_start.py /path/to/project [repeats] [--family nodule3d|fusion_seg]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import save

COMMANDS = {
    "nodule3d": (["evaluate", "nodule3d"], ["train", "nodule3d", "--cell", "ce", "--seed", "0", "--force"]),
    "fusion_seg": (["train", "fusion_seg", "--cell", "mri", "--seed", "2", "--force"],),
}


def _time(cmd, cwd, env) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def main(project: str, repeats: int = 3, family: str = "nodule3d") -> dict:
    from medops.warm import LIBRARIES, PRELOAD, WarmServer

    project = Path(project).resolve()
    medops = str(Path(sys.executable).parent / "medops")
    base = {**os.environ, "PYTHONPATH": str(project / "src")}
    base.pop("MLFLOW_TRACKING_URI", None)
    res = {"project": str(project), "repeats": repeats, "family": family, "commands": {}}
    os.environ["PYTHONPATH"] = base["PYTHONPATH"]     # the servers import the project's code too
    t0 = time.perf_counter()
    with WarmServer(preload=LIBRARIES) as libs:
        res["server_start_libraries_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        with WarmServer(preload=PRELOAD) as full:
            res["server_start_preload_s"] = round(time.perf_counter() - t0, 1)
            for args in COMMANDS[family]:
                t = {"cold": [], "libraries": [], "preload": []}
                for _ in range(repeats):
                    t["cold"].append(_time([medops, *args], project, {**base, "MEDOPS_WARM": "0"}))
                    t["libraries"].append(_time([medops, *args], project, {**base, **libs}))
                    t["preload"].append(_time([medops, *args], project, {**base, **full}))
                c, w, p = (statistics.mean(t[k]) for k in ("cold", "libraries", "preload"))
                res["commands"][" ".join(args)] = {
                    "cold_s": round(c, 2), "warm_libraries_s": round(w, 2), "warm_preload_s": round(p, 2),
                    "cold_over_preload": round(c / p, 2), "libraries_over_preload": round(w / p, 3),
                    "saved_by_stores_s": round(w - p, 2), "all_s": {k: [round(x, 2) for x in v] for k, v in t.items()}}
                print(f"medops {' '.join(args):<45} cold {c:6.1f} s   warm (libraries) {w:6.1f} s   "
                      f"warm (+ stores) {p:6.1f} s   libraries/preload x{w / p:.3f}   saved {w - p:.1f} s")
    print(f"warm server start (once per `medops run`): libraries {res['server_start_libraries_s']} s, "
          f"with the stores {res['server_start_preload_s']} s")
    save("warm_start", res)
    return res


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--family")]
    fam = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--family=")), "nodule3d")
    main(args[0], int(args[1]) if len(args) > 1 else 3, fam)
