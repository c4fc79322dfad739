"""Warm start (medops.warm) against a process of its own, in one run: the same `medops` command, cold and
warm, alternated, in a project whose stages have run (default: evaluate and one ablation cell of the
nodule3d family). Prints the mean wall time of each and the ratio; writes benchmarks/results/warm_start.json.

    python benchmarks/warm_start.py /path/to/project [repeats]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import save

COMMANDS = (["evaluate", "nodule3d"], ["train", "nodule3d", "--cell", "ce", "--seed", "0", "--force"])


def _time(cmd, cwd, env) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def main(project: str, repeats: int = 3) -> dict:
    from medops.warm import WarmServer

    project = Path(project).resolve()
    medops = str(Path(sys.executable).parent / "medops")
    base = {**os.environ, "PYTHONPATH": str(project / "src")}
    base.pop("MLFLOW_TRACKING_URI", None)
    res = {"project": str(project), "repeats": repeats, "commands": {}}
    os.environ["PYTHONPATH"] = base["PYTHONPATH"]     # the server imports the project's code too
    t0 = time.perf_counter()
    with WarmServer() as warm:
        res["server_start_s"] = round(time.perf_counter() - t0, 1)
        for args in COMMANDS:
            cold_t, warm_t = [], []
            for _ in range(repeats):
                cold_t.append(_time([medops, *args], project, {**base, "MEDOPS_WARM": "0"}))
                warm_t.append(_time([medops, *args], project, {**base, **warm}))
            c, w = statistics.mean(cold_t), statistics.mean(warm_t)
            res["commands"][" ".join(args)] = {"cold_s": round(c, 2), "warm_s": round(w, 2), "cold_over_warm": round(c / w, 2),
                                               "saved_s": round(c - w, 1)}
            print(f"medops {' '.join(args):<45} cold {c:6.1f} s   warm {w:6.1f} s   x{c / w:.2f}   saved {c - w:.1f} s")
    print(f"warm server start (imports, once per `medops run`): {res['server_start_s']} s")
    save("warm_start", res)
    return res


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
