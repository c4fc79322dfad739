"""Stage functions behind the CLI verbs (pure wiring of library pieces)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from medops.config import Config
from medops.errors import DataError, MedopsError
from medops.families import get_family

DATASETS = {"breast-trimodal"}


def data_dir(dataset: str) -> Path:
    return Path("data/raw") / dataset


def validation_dir(dataset: str) -> Path:
    return Path("reports/validation") / dataset


def preprocessed_dir(dataset: str) -> Path:
    return Path("data/preprocessed") / dataset


def model_dir(family: str) -> Path:
    return Path("models") / family


def report_dir(family: str) -> Path:
    return Path("reports") / family


def generate(cfg: Config, dataset: str, out: Path, force: bool = False) -> pd.DataFrame:
    from medops.data.breast_trimodal import contact_sheet, generate as gen

    if dataset not in DATASETS:
        raise DataError(f"dataset '{dataset}'", "unknown dataset", f"use one of {sorted(DATASETS)}")
    if out.exists() and any(out.iterdir()) and not force:
        raise DataError(str(out), "no_overwrite: the output folder already holds a dataset",
                        "choose another --out, or pass --force to replace it (dvc repro removes it for you)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
    try:
        manifest = gen(cfg.generate, cfg.split, tmp)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fig = Path("reports/data") / f"{dataset}_contact_sheet.png"
    contact_sheet(out, fig)
    return manifest


def train(cfg: Config, family: str, *, resume: bool = False, progress: bool = True) -> dict:
    import torch

    from medops import tracking
    from medops.data.dataset import ShardDataset
    from medops.engine import Trainer, load_checkpoint, seed_everything
    from medops.models import get_model
    from medops.preprocess import load_index
    from medops.validation import require_passed

    fam = get_family(family)
    fcfg = cfg.family(family)
    data, pre, out = data_dir(fam.dataset), preprocessed_dir(fam.dataset), model_dir(family)
    require_passed(data, validation_dir(fam.dataset))
    index = load_index(pre)
    train_ds, val_ds = ShardDataset(pre, index, "train"), ShardDataset(pre, index, "val")
    seed_everything(fcfg.train.seed)  # the initial weights are part of the run's seed
    net = get_model(family, **asdict(fcfg.model))
    task = fam.task(net, fcfg.train)
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    prev = json.loads(run_file.read_text()) if (resume and run_file.exists()) else {}
    tags = {"family": family, "profile": cfg.profile, "git_commit": tracking.git_commit(),
            "dataset": fam.dataset, "dataset_version": tracking.dataset_version(data),
            "validation": "passed"}
    run = tracking.start_or_resume_run(family, "main", tags=tags, prefix=cfg.tracking.experiment_prefix,
                                       run_id=prev.get("run_id"))
    try:
        info = tracking.mlflow_run.write_run_file(run_file, run)
        if not prev:
            tracking.log_params_and_config(cfg.raw | {"family": family, "profile": cfg.profile})
        trainer = Trainer(task, fcfg.train, out, logger=tracking.MlflowLogger(run.info.run_id), progress=progress)
        history = trainer.fit(train_ds, val_ds, resume=resume)
        hist = pd.DataFrame(history)
        hist.to_csv(out / "history.csv", index=False)
        best = load_checkpoint(out / "best.pt")
        net.load_state_dict(best["model"])
        (out / "train_metrics.json").write_text(json.dumps(
            {"best_epoch": best["epoch"], "best_val_dice": best[task.monitor], "epochs": len(history),
             "final_train_loss": history[-1]["train_loss"], "final_val_loss": history[-1]["val_loss"]}, indent=2))
        with torch.no_grad():
            net.eval()(val_ds.images[:2].float())  # fresh attention weights from the best model
        if hasattr(net, "attention_weights_full"):
            (out / "attention_weights.json").write_text(json.dumps(net.attention_weights_full()))
            tracking.log_artifact(out / "attention_weights.json", "attention")
        tracking.log_artifact(out / "history.csv", "training")
        model_uri = tracking.log_model(torch.nn.Sequential(net, torch.nn.Sigmoid()),
                                       val_ds.images[:1].float().numpy())
        info["model_uri"] = model_uri
        run_file.write_text(json.dumps(info, indent=2))
        tracking.end_run()
        return info
    except BaseException as exc:
        tracking.end_run("FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED", reason=repr(exc))
        raise


def evaluate(cfg: Config, family: str) -> dict:
    from medops import tracking
    from medops.engine import load_checkpoint
    from medops.models import get_model
    from medops.preprocess import load_index

    fam = get_family(family)
    fcfg = cfg.family(family)
    mdir, out, pre = model_dir(family), report_dir(family), preprocessed_dir(fam.dataset)
    if not (mdir / "best.pt").exists():
        raise MedopsError(str(mdir / "best.pt"), "trained: no checkpoint", f"run `medops train {family}` first")
    net = get_model(family, **asdict(fcfg.model))
    net.load_state_dict(load_checkpoint(mdir / "best.pt")["model"])
    metrics = fam.evaluate(net, pre, load_index(pre), out, history_csv=mdir / "history.csv",
                           modalities=fcfg.model.modalities, threshold=fcfg.evaluate.threshold)
    run = json.loads((mdir / "run.json").read_text())
    tracking.start_or_resume_run(family, "main", tags={"evaluated": "true"}, run_id=run["run_id"])
    import mlflow

    mlflow.log_metrics({f"test_{k}": v for k, v in metrics["model"].items()})
    mlflow.log_metrics({f"baseline_test_{k}": v for k, v in metrics["baseline"].items()})
    for p in ("metrics.json", "per_case.csv", "figures"):
        tracking.log_artifact(out / p, "evaluation" if p != "figures" else "figures")
    tracking.end_run()
    metrics["run"] = run
    return metrics
