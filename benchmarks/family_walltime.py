"""Wall time of one family's whole pipeline as users run it — `medops run --family FAMILY` (warm start, the
ablation's runs two at a time, longest cells first, the main model's training and evaluation beside them) —
for one profile in a fresh copy of the project, split into: data (the stages the ablation needs), the
ablation's runs with the main model beside them, and after them (ablation report, promotion). "Without the
ablation" is data + the main model's training and evaluation as timed beside the ablation (one core of two,
the other busy: an upper bound of `dvc repro <family>_evaluate` on its own). The machine reference
(`reports/run.json` -> machine) is kept with the numbers: compare runs only with similar references. The copy imports its own ``src`` (PYTHONPATH), so editing the working tree
meanwhile does not change what is timed. Results go to benchmarks/results/family_walltime_<family>_<profile>.json.

    python benchmarks/family_walltime.py nodule3d quick
    python benchmarks/family_walltime.py vl_fusion quick
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
import time

from _common import RESULTS, fresh_project, save


def _numbers(d: dict) -> dict:
    return {k: round(v, 3) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def main(family: str, profile: str = "quick") -> dict:
    dst, env = fresh_project(f"medops-{family}-wall-", profile)
    t0 = time.perf_counter()
    r = subprocess.run(["medops", "run", "--family", family], cwd=dst, env=env, capture_output=True, text=True)
    command_s = round(time.perf_counter() - t0, 1)
    run = json.loads((dst / "reports/run.json").read_text())
    rec = run["families"][family]
    if r.returncode or rec["status"] != "ok":
        print(r.stdout[-4000:], r.stderr[-2000:])
        raise SystemExit(f"medops run --family {family} failed: {rec.get('reason')}")
    ph = rec["phases"]
    statuses = [json.loads(p.read_text()) for p in (dst / "models" / family / "cells").glob("*/seed*/status.json")]
    with open(dst / "reports/ablation" / family / "claims.csv") as f:
        claims = [{k: row[k] for k in ("claim", "verdict") if k in row} for row in csv.DictReader(f)]
    walls = sorted(s["wall_s"] for s in statuses if "wall_s" in s)
    promo = json.loads((dst / "reports/promotion" / f"{family}.json").read_text())
    metrics = json.loads((dst / "reports" / family / "metrics.json").read_text())
    res = {"family": family, "profile": profile, "command": f"medops run --family {family}",
           "machine": run["machine"], "command_s": command_s, "family_s": rec["wall_s"],
           "phases_s": {"data": ph["before_group_s"], "ablation_runs_and_main_model": ph["group_s"],
                        "ablation_report_and_promotion": ph["after_group_s"]},
           "main_model_and_evaluation_s": ph["beside_group_s"],
           "without_ablation_s": round(ph["before_group_s"] + ph["beside_group_s"], 1),
           "goal_without_ablation_s": 600,
           "with_ablation_s": rec["wall_s"], "goal_with_ablation_s": 1200,
           "ablation_runs": len(statuses),
           "plateaued": sum(bool(s.get("converged", s.get("early_stopped"))) for s in statuses),
           "run_wall_s": {"median": round(statistics.median(walls), 1), "max": round(walls[-1], 1),
                          "sum": round(sum(walls), 1)} if walls else None,
           "claims": claims,
           "main_model": _numbers(metrics.get("model", metrics)),
           "promotion": {k: promo.get(k) for k in ("action", "version", "champion", "reasons") if k in promo}}
    shutil.copytree(dst / "reports/ablation" / family, RESULTS / f"{family}_ablation_{profile}", dirs_exist_ok=True)
    save(f"family_walltime_{family}_{profile}", res)
    shutil.rmtree(dst.parent, ignore_errors=True)
    return res


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "quick")
