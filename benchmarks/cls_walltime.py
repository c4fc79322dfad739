"""Wall time of the transfer_cls pipeline for one profile in a fresh copy of the project, phase by
phase with `dvc repro` (datasets, source pretraining, main model, one dataset's ablation, the
other datasets' cells + report + promotion). Results and the ablation report are kept under
benchmarks/results/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import yaml

from _common import RESULTS, fresh_project, save


def main(profile: str = "quick") -> dict:
    dst, env = fresh_project("medops-cls-wall-", profile)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    abl = params["ablation"]["transfer_cls"]
    base_ds = abl["baseline"]["dataset"]
    f = "src/medops/families/transfer_cls/dvc.yaml:"       # the family's own pipeline file
    one = [f"{f}transfer_cls_ablate@{c}-{s}" for c, lv in abl["cells"].items() if (lv or {}).get("dataset", base_ds) == base_ds
           for s in abl["seeds"]]
    phases = [("datasets_s", [f + "cls_preprocess"]), ("pretrain_s", [f + "pretrain"]),
              ("main_train_evaluate_s", [f + "transfer_cls_evaluate"]),
              (f"ablation_{base_ds}_s", one), ("other_cells_report_promote_s", [f + "transfer_cls_promote"])]
    res = {"profile": profile, "cells_one_dataset": len(one)}
    for name, targets in phases:
        t = time.perf_counter()
        r = subprocess.run(["dvc", "repro", *targets], cwd=dst, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"dvc repro {targets} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        res[name] = round(time.perf_counter() - t, 1)
        print(name, res[name], flush=True)
    res["total_s"] = round(sum(v for k, v in res.items() if k.endswith("_s")), 1)
    res["goal_one_dataset_ablation_s"] = 900
    m = json.loads((dst / "reports/transfer_cls/metrics.json").read_text())
    rep = json.loads((dst / "reports/ablation/transfer_cls/summary.json").read_text())
    dec = json.loads((dst / "reports/promotion/transfer_cls.json").read_text())
    res.update(main_test=m["model"], main_test_ci95=m["ci95"], n_test_cases=m["n_test_cases"], claims=rep["claims"],
               cells_finished=f"{rep['n_finished']}/{rep['n_cells']}", promotion=dec["action"],
               candidate=f"{dec.get('candidate_cell')}/seed{dec.get('candidate_seed')}")
    out = RESULTS / f"cls_ablation_{profile}"
    shutil.copytree(dst / "reports/ablation/transfer_cls", out, dirs_exist_ok=True)
    shutil.copytree(dst / "reports/transfer_cls", RESULTS / f"cls_main_{profile}", dirs_exist_ok=True)
    shutil.copytree(dst / "reports/data", RESULTS / f"cls_data_{profile}", dirs_exist_ok=True)
    res["project"] = str(dst)  # kept for inspection (MLflow store, models); delete when done
    save(f"cls_walltime_{profile}", res)
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick")
