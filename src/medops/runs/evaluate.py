"""`medops evaluate <family>`: the main model on the test split, with the family's evaluation."""

from __future__ import annotations

import json

from medops import layout
from medops.errors import MedopsError
from medops.families import get_family


def evaluate(cfg, family: str) -> dict:
    """metrics.json, per_case.csv and figures under reports/<family>/, logged to the training run."""
    from medops import tracking
    from medops.engine import load_checkpoint
    from medops.preprocess import load_index

    fam, fcfg = get_family(family, cfg), cfg.family(family)
    dataset = fam.default_dataset(fcfg)
    mdir, out, pre = layout.model_dir(family), layout.report_dir(family), layout.preprocessed_dir(dataset)
    if not (mdir / "best.pt").exists():
        raise MedopsError(str(mdir / "best.pt"), "trained: no checkpoint", f"run `medops train {family}` first")
    index = load_index(pre)
    net = fam.build_model(fcfg, fcfg.model, index, start_weights=False)
    net.load_state_dict(load_checkpoint(mdir / "best.pt")["model"])
    metrics = fam.evaluate(net, pre, index, out, history_csv=mdir / "history.csv", fcfg=fcfg, model_cfg=fcfg.model)
    run = json.loads((mdir / "run.json").read_text())
    tracking.start_or_resume_run(family, "main", tags={"evaluated": "true"}, run_id=run["run_id"])
    tracking.log_metrics({f"test_{k}": v for k, v in metrics["model"].items()})
    tracking.log_metrics({f"baseline_test_{k}": v for k, v in metrics["baseline"].items()})
    for p in ("metrics.json", "per_case.csv", "figures"):
        tracking.log_artifact(out / p, "evaluation" if p != "figures" else "figures")
    tracking.end_run()
    metrics["run"] = run
    return metrics
