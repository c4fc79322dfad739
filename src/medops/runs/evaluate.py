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
    from medops.preprocess.shards import require_current
    from medops.validation import require_passed

    fam, fcfg = get_family(family, cfg), cfg.family(family)
    dataset = fam.default_dataset(fcfg)
    mdir, out, pre = layout.model_dir(family), layout.report_dir(family), layout.preprocessed_dir(dataset)
    run = _finished_run(family, mdir)
    require_current(pre, require_passed(layout.data_dir(dataset), layout.validation_dir(dataset)))
    index = load_index(pre)
    net = fam.build_model(fcfg, fcfg.model, index, start_weights=False)
    net.load_state_dict(load_checkpoint(mdir / "best.pt")["model"])
    metrics = fam.evaluate(net, pre, index, out, history_csv=mdir / "history.csv", fcfg=fcfg, model_cfg=fcfg.model)
    tracking.start_or_resume_run(family, "main", tags={"evaluated": "true"}, run_id=run["run_id"])
    tracking.log_metrics({f"test_{k}": v for k, v in metrics["model"].items()})
    tracking.log_metrics({f"baseline_test_{k}": v for k, v in metrics["baseline"].items()})
    for p in ("metrics.json", "per_case.csv", "figures"):
        tracking.log_artifact(out / p, "evaluation" if p != "figures" else "figures")
    tracking.end_run()
    metrics["run"] = run
    return metrics


def _finished_run(family: str, mdir) -> dict:
    """The main run, only if its training completed: the completion record names the run in run.json and
    MLflow has it FINISHED (a killed, failed or half-written run is never evaluated)."""
    from medops import tracking

    fix = f"run `medops train {family}` (or `--resume` to finish an interrupted one)"
    if not (mdir / "best.pt").exists() or not (mdir / "run.json").exists():
        raise MedopsError(str(mdir / "best.pt"), "trained: no finished training", fix)
    run = json.loads((mdir / "run.json").read_text())
    done = mdir / "train_metrics.json"
    if not done.exists() or json.loads(done.read_text()).get("run_id", run["run_id"]) != run["run_id"]:
        raise MedopsError(str(mdir), f"trained: run {run['run_id']} did not complete (no completion record)", fix)
    status = tracking.run_status(run["run_id"])
    if status != "FINISHED":
        raise MedopsError(str(mdir), f"trained: MLflow run {run['run_id']} is {status}, not FINISHED", fix)
    return run
