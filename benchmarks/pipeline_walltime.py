"""Wall time of `dvc repro` for one profile in a fresh copy of the project (excludes the install)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from _common import RESULTS, fresh_project, save


def main(profile: str = "smoke") -> dict:
    dst, env = fresh_project("medops-wall-", profile)
    t0 = time.perf_counter()
    subprocess.run(["dvc", "repro", "evaluate"], cwd=dst, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(["dvc", "repro", "promote"], cwd=dst, check=True, env=env, capture_output=True)
    wall_ablation = time.perf_counter() - t0
    m = json.loads((dst / "reports/fusion_seg/metrics.json").read_text())
    rep = json.loads((dst / "reports/ablation/fusion_seg/summary.json").read_text())
    shutil.copytree(dst / "reports/ablation", RESULTS / f"ablation_{profile}", dirs_exist_ok=True)
    res = {"profile": profile, "wall_s": round(wall, 1), "goal_s": {"smoke": 120, "quick": 600}.get(profile),
           "ablation_report_promote_wall_s": round(wall_ablation, 1), "ablation_goal_s": 1200,
           "ablation_cells_finished": f"{rep['n_finished']}/{rep['n_cells']}", "claims": rep["claims"],
           "test_dsc_model": round(m["model"]["dsc"], 3), "test_dsc_best_baseline": round(m["baseline"]["dsc"], 3),
           "baseline": m["baseline_best"], "n_test_cases": m["n_test_cases"]}
    save(f"pipeline_walltime_{profile}", res)
    shutil.rmtree(dst.parent, ignore_errors=True)
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smoke")
