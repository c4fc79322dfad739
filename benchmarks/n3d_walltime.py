"""Wall time of the nodule3d pipeline for one profile in a fresh copy of the project, phase by phase with
`dvc repro`: the family without its ablation (generate, validate, preprocess, train, evaluate), then the
ablation over the folds, its report and the promotion. The copy imports its own ``src`` (PYTHONPATH), so
editing the working tree meanwhile does not change what is timed. Results and the ablation report are kept
under benchmarks/results/.

    python benchmarks/n3d_walltime.py quick
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

from _common import RESULTS, fresh_project, save


def main(profile: str = "quick") -> dict:
    dst, env = fresh_project("medops-n3d-wall-", profile)
    phases, log = {}, []
    for name, target in (("data", "n3d_preprocess"), ("main_model", "nodule3d_evaluate"),
                         ("ablation_report_promote", "n3d_promote")):
        t0 = time.perf_counter()
        target = "src/medops/families/nodule3d/dvc.yaml:" + target     # the family's own pipeline file
        r = subprocess.run(["dvc", "repro", target], cwd=dst, env=env, capture_output=True, text=True)
        phases[name] = round(time.perf_counter() - t0, 1)
        log.append(r.stdout + r.stderr)
        print(name, phases[name], "s", flush=True)
        if r.returncode:
            print(r.stdout[-3000:], r.stderr[-3000:])
            raise SystemExit(f"dvc repro {target} failed")
    m = json.loads((dst / "reports/nodule3d/metrics.json").read_text())
    pre = json.loads((dst / "data/preprocessed/lidc-sim/preprocess.json").read_text())
    claims = (dst / "reports/ablation/nodule3d/claims.csv").read_text()
    cells = sum(1 for _ in (dst / "models/nodule3d/cells").glob("*/seed*/per_case.csv"))
    shutil.copytree(dst / "reports/ablation/nodule3d", RESULTS / f"n3d_ablation_{profile}", dirs_exist_ok=True)
    shutil.copytree(dst / "reports/nodule3d", RESULTS / f"n3d_main_{profile}", dirs_exist_ok=True)
    promo = json.loads((dst / "reports/promotion/nodule3d.json").read_text())
    res = {"profile": profile, "phases_s": phases,
           "without_ablation_s": round(phases["data"] + phases["main_model"], 1), "goal_without_ablation_s": 600,
           "with_ablation_s": round(sum(phases.values()), 1), "goal_with_ablation_s": 1200,
           "nodules": pre["n_cases"], "class_counts": pre["class_counts"], "cell_runs_finished": cells,
           "main_model": {k: round(v, 3) for k, v in m["model"].items() if isinstance(v, (int, float))},
           "n_test": m.get("n_test_cases"), "claims_csv": claims,
           "promotion": {k: promo.get(k) for k in ("champion", "challenger", "decision") if k in promo},
           "epochs_logged": len(re.findall(r"val_auc", "".join(log)))}
    save(f"n3d_walltime_{profile}", res)
    shutil.rmtree(dst.parent, ignore_errors=True)
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick")
