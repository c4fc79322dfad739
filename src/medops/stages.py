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


def cell_dir(family: str, cell: str, seed: int) -> Path:
    return model_dir(family) / "cells" / cell / f"seed{seed}"


def build_model(model_cfg):
    from medops.models import get_model

    kw = asdict(model_cfg)
    return get_model(kw.pop("arch"), **kw)


def _fingerprint(model_cfg, train_cfg, cell: str | None, index: pd.DataFrame) -> str:
    """What a training run depends on: model and training config, cell, and the exact preprocessed cases."""
    import hashlib

    payload = json.dumps({"model": asdict(model_cfg), "train": asdict(train_cfg), "cell": cell,
                          "cases": sorted(zip(index.case_id, index.split, index.shard))}, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _already_done(out: Path, fingerprint: str, cell: str | None) -> dict | None:
    """The finished run with the same inputs, if there is one (so re-running a task changes nothing)."""
    run_file, marker = out / "run.json", out / ("status.json" if cell else "train_metrics.json")
    if not (run_file.exists() and marker.exists()):
        return None
    done = json.loads(marker.read_text())
    if done.get("fingerprint") != fingerprint or (done.get("status", "finished") == "finished"
                                                   and not (out / "best.pt").exists()):
        return None
    return {**json.loads(run_file.read_text()), "skipped": True, "status": done.get("status", "finished"),
            "reason": done.get("reason", "")}


def train(cfg: Config, family: str, *, resume: bool = False, progress: bool = True,
          cell: str | None = None, seed: int | None = None, force: bool = False) -> dict:
    """Train the family's model, or one ablation cell (``cell`` + ``seed``), and track it in MLflow.

    A cell also evaluates itself on the test split (per-case metrics, missing-modality
    conditions). A cell that fails (e.g. non-finite loss) is marked FAILED in MLflow and in
    its ``status.json``, and returns normally so the other cells go on.
    """
    import torch

    from medops import tracking
    from medops.data.dataset import ShardDataset
    from medops.engine import Trainer, load_checkpoint, seed_everything
    from medops.engine.distributed import init_distributed, shutdown
    from medops.preprocess import load_index
    from medops.validation import require_passed

    fam = get_family(family)
    fcfg = cfg.family(family)
    dinfo = init_distributed()  # one process unless launched by torchrun (medops train --nproc N)
    data, pre = data_dir(fam.dataset), preprocessed_dir(fam.dataset)
    model_cfg, train_cfg, out, parent = fcfg.model, fcfg.train, model_dir(family), None
    if cell is not None:
        abl = fcfg.ablation
        abl.check(family)
        if seed is None:
            raise MedopsError("--seed", "an ablation cell needs a seed", f"pass one of {list(abl.seeds)}")
        model_cfg = abl.cell_model(cell, fcfg.model)
        train_cfg = abl.cell_train(cell, fcfg.train, seed)
        out = cell_dir(family, cell, seed)
    validation = require_passed(data, validation_dir(fam.dataset))
    index = load_index(pre)
    fingerprint = _fingerprint(model_cfg, train_cfg, cell, index)
    if not resume and not force and dinfo.main:
        done = _already_done(out, fingerprint, cell)
        if done is not None:
            return done
    train_ds, val_ds = ShardDataset(pre, index, "train"), ShardDataset(pre, index, "val")
    seed_everything(train_cfg.seed)  # the initial weights are part of the run's seed
    net = build_model(model_cfg)
    task = fam.task(net, train_cfg)
    if not dinfo.main:  # ranks > 0 train their shard; rank 0 owns tracking, checkpoints and evaluation
        try:
            Trainer(task, train_cfg, out, logger=None, progress=False).fit(train_ds, val_ds, resume=resume)
        finally:
            shutdown()
        return {"rank": dinfo.rank}
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    prev = json.loads(run_file.read_text()) if (resume and run_file.exists()) else {}
    tags = {"family": family, "profile": cfg.profile, "git_commit": tracking.git_commit(),
            "dataset": fam.dataset, "dataset_version": tracking.dataset_version(data),
            "validation": validation["status"], "validation_manifest_sha256": validation["manifest_sha256"],
            "cell": cell or "main", "seed": train_cfg.seed, **{f"factor.{k}": v for k, v in
                                                                 (fcfg.ablation.levels(cell) if cell else {}).items()}}
    if cell is not None and not prev:
        parent = tracking.ablation_parent_run(family, fcfg.ablation, tags, prefix=cfg.tracking.experiment_prefix)
    run_name = f"{family}/{cell}/seed{seed}" if cell else f"{family}/main"
    run = tracking.start_or_resume_run(family, run_name, tags=tags, prefix=cfg.tracking.experiment_prefix,
                                       run_id=prev.get("run_id"), parent_run_id=parent)
    (out / "status.json").unlink(missing_ok=True)
    try:
        info = tracking.mlflow_run.write_run_file(run_file, run)
        if not prev:
            tracking.log_params_and_config(cfg.raw | {"family": family, "profile": cfg.profile, "cell": cell or "main",
                                                      "resolved_model": asdict(model_cfg),
                                                      "resolved_train": asdict(train_cfg),
                                                      "world_size": dinfo.world})
        trainer = Trainer(task, train_cfg, out, logger=tracking.MlflowLogger(run.info.run_id), progress=progress)
        history = trainer.fit(train_ds, val_ds, resume=resume)
        pd.DataFrame(history).to_csv(out / "history.csv", index=False)
        best = load_checkpoint(out / "best.pt")
        net.load_state_dict(best["model"])
        train_metrics = {"best_epoch": best["epoch"], "best_val_dice": best[task.monitor], "epochs": len(history),
                         "final_train_loss": history[-1]["train_loss"], "final_val_loss": history[-1]["val_loss"],
                         "fingerprint": fingerprint}
        (out / "train_metrics.json").write_text(json.dumps(train_metrics, indent=2))
        with torch.no_grad():
            net.eval()(val_ds.images[:2].float())  # fresh attention weights from the best model
        if hasattr(net, "attention_weights_full"):
            (out / "attention_weights.json").write_text(json.dumps(net.attention_weights_full()))
            tracking.log_artifact(out / "attention_weights.json", "attention")
        tracking.log_artifact(out / "history.csv", "training")
        if cell is None:
            info["model_uri"] = tracking.log_model(torch.nn.Sequential(net, torch.nn.Sigmoid()),
                                                   val_ds.images[:1].float().numpy())
        else:
            from medops.evaluation.segmentation import evaluate_conditions

            test = evaluate_conditions(net, pre, index, out, modalities=model_cfg.modalities,
                                       threshold=fcfg.evaluate.threshold)
            import mlflow

            mlflow.log_metrics({f"test_{k}": v for k, v in test["full"].items()})
            tracking.log_artifact(out / "per_case.csv", "evaluation")
            (out / "status.json").write_text(json.dumps({"status": "finished", **train_metrics,
                                                         "test": test["full"]}, indent=2))
        run_file.write_text(json.dumps(info, indent=2))
        tracking.end_run()
        return info
    except FloatingPointError as exc:
        tracking.end_run("FAILED", reason=str(exc))
        if cell is None:
            raise
        (out / "status.json").write_text(json.dumps({"status": "failed", "reason": str(exc),
                                                     "fingerprint": fingerprint}, indent=2))
        for stale in ("best.pt", "last.pt"):
            (out / stale).unlink(missing_ok=True)
        return {"run_id": run.info.run_id, "status": "failed", "reason": str(exc)}
    except BaseException as exc:
        tracking.end_run("FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED", reason=repr(exc))
        raise
    finally:
        shutdown()


def evaluate(cfg: Config, family: str) -> dict:
    from medops import tracking
    from medops.engine import load_checkpoint
    from medops.preprocess import load_index

    fam = get_family(family)
    fcfg = cfg.family(family)
    mdir, out, pre = model_dir(family), report_dir(family), preprocessed_dir(fam.dataset)
    if not (mdir / "best.pt").exists():
        raise MedopsError(str(mdir / "best.pt"), "trained: no checkpoint", f"run `medops train {family}` first")
    net = build_model(fcfg.model)
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


def ablation_report_dir(family: str) -> Path:
    return Path("reports/ablation") / family


def report(cfg: Config, family: str) -> dict:
    """Aggregate the ablation cells into paper-shaped tables; log them to the ablation's parent run."""
    from medops import tracking
    from medops.experiments.report import build_report

    fcfg = cfg.family(family)
    fcfg.ablation.check(family)
    out = ablation_report_dir(family)
    summary = build_report(model_dir(family) / "cells", fcfg.ablation, out, alpha=fcfg.promote.alpha,
                           profile=cfg.profile)
    cells = pd.read_csv(out / "cells.csv")
    run_ids = [r for r in cells.run_id.dropna() if r]
    parent = tracking.parent_of(run_ids[0]) if run_ids else None
    if parent:
        tracking.log_artifacts_to(parent, out, "report")
    summary["parent_run_id"] = parent
    return summary


def promotion_dir() -> Path:
    return Path("reports/promotion")


def _model_card(family: str, version: str, cand, tags: dict, gates, fcfg, cell_table_row: dict | None) -> str:
    lines = [f"# Model card — {family} version {version}", "",
             "**Intended use:** research use only, not for diagnosis. Trained and tested on *simulated* "
             "tri-modal breast images (US, MG, MRI); performance on real patients is unknown.", "",
             "## Provenance", "",
             f"- MLflow run: `{cand.run_id}` (cell `{cand.cell}`, seed {cand.seed})",
             f"- Dataset: `{tags.get('dataset')}`, version `{tags.get('dataset_version')}`",
             f"- Validation: **{tags.get('validation')}** (manifest sha256 `{tags.get('validation_manifest_sha256', '')[:16]}…`)",
             f"- Code: git `{tags.get('git_commit')}`; profile `{tags.get('profile')}`",
             f"- Model: {', '.join(f'{k}={v}' for k, v in tags.items() if k.startswith('factor.'))}", "",
             "## Test metrics (this seed)", "",
             "| DSC | IoU | sensitivity | specificity |", "|---|---|---|---|",
             f"| {cand.test_dsc:.3f} | {cand.test_iou:.3f} | {cand.test_sensitivity:.3f} | {cand.test_specificity:.3f} |", ""]
    if cell_table_row:
        lines += ["## This cell over all seeds (mean ± 95 % CI)", "",
                  " ".join(f"{m.upper()} {100 * cell_table_row[f'{m}_mean']:.1f} ± {100 * cell_table_row[f'{m}_ci95']:.1f} %;"
                           for m in ("dsc", "iou", "sensitivity", "specificity")), ""]
    lines += ["## Promotion gates", ""] + [f"- {'PASS' if g.passed else 'FAIL'} `{g.name}`: {g.reason}" for g in gates]
    rep = ablation_report_dir(family) / "report.md"
    if rep.exists():
        lines += ["", "## Ablation (from `medops report`)", "", rep.read_text().split("\n", 1)[1]]
    lines += ["", "## Known limitations", "",
              "- Simulated data calibrated on image appearance, not on clinical data; no external validation.",
              "- 2-D slices at the profile's image size; one lesion per case; MG treated as co-registered with US.",
              "- Confidence intervals are over few seeds (t-interval); per-case tests assume independent cases."]
    figs = sorted((ablation_report_dir(family) / "figures").glob("*.png"))
    if figs:
        lines += ["", "## Figures", ""] + [f"![{f.stem}](model_card_figures/{f.name})" for f in figs]
    return "\n".join(lines) + "\n"


def promote(cfg: Config, family: str) -> dict:
    """Register the best ablation cell as `challenger`; move `champion` only when every gate passes."""
    import torch

    from medops.data.dataset import ShardDataset
    from medops.engine import load_checkpoint
    from medops.experiments.promotion import evaluate_gates, select_candidate
    from medops.experiments.report import collect
    from medops import tracking
    from medops.preprocess import load_index
    from medops.tracking import registry

    fam = get_family(family)
    fcfg = cfg.family(family)
    abl, pc = fcfg.ablation, fcfg.promote
    cells = collect(model_dir(family) / "cells", abl)
    try:
        cand = select_candidate(cells)
    except ValueError as exc:
        raise MedopsError(f"ablation of {family}", str(exc), "run the ablation (dvc repro) first") from exc
    cdir = cell_dir(family, cand.cell, int(cand.seed))
    tags = registry.run_tags(cand.run_id)
    net = build_model(abl.cell_model(cand.cell, fcfg.model))
    net.load_state_dict(load_checkpoint(cdir / "best.pt")["model"])
    pre = preprocessed_dir(fam.dataset)
    example = ShardDataset(pre, load_index(pre), "test").images[:1].float().numpy()
    model_uri = registry.ensure_model_logged(cand.run_id, torch.nn.Sequential(net.eval(), torch.nn.Sigmoid()), example)
    existing = registry.version_for_run(family, cand.run_id)
    champion = registry.alias_version(family, "champion")
    decision = {"family": family, "candidate_cell": cand.cell, "candidate_seed": int(cand.seed),
                "run_id": cand.run_id}
    if existing is not None and champion == str(existing.version):
        decision.update(version=str(existing.version), action="unchanged", champion=champion,
                        reasons=["nothing new: the best cell is already the champion"])
        return _write_decision(family, decision)
    version = str(existing.version if existing is not None else registry.register(family, model_uri, cand.run_id).version)
    if registry.alias_version(family, "challenger") != version:
        registry.set_alias(family, "challenger", version)
    cand_cases = pd.read_csv(cdir / "per_case.csv").query("condition == 'full'").set_index("case_id")[pc.metric]
    champ_cases = None
    if champion is not None:
        champ_run = registry.version_run_id(family, champion)
        tmp = Path(tempfile.mkdtemp(prefix="medops-champ-"))
        p = registry.download(champ_run, "evaluation/per_case.csv", tmp)
        df = pd.read_csv(p)
        champ_cases = (df.query("condition == 'full'") if "condition" in df else df).set_index("case_id")[pc.metric]
    gates = evaluate_gates(validation=tags.get("validation", "unknown"), test_mean=float(cand[f"test_{pc.metric}"]),
                           floor=pc.floor, metric=pc.metric, candidate_cases=cand_cases, champion_cases=champ_cases,
                           alpha=pc.alpha)
    promoted = all(g.passed for g in gates)
    table_row = None
    for f in (ablation_report_dir(family)).glob("table_*.csv"):
        t = pd.read_csv(f)
        hit = t[t.cell == cand.cell]
        if len(hit):
            table_row = hit.iloc[0].to_dict()
            break
    card = _model_card(family, version, cand, tags, gates, fcfg, table_row)
    registry.log_text(cand.run_id, card, f"model_card_v{version}.md")
    if (ablation_report_dir(family) / "figures").exists():
        tracking.log_artifacts_to(cand.run_id, ablation_report_dir(family) / "figures", "model_card_figures")
    registry.describe_version(family, version, card, full_card=f"model_card_v{version}.md")
    registry.tag_version(family, version, {
        "promotion.decision": "promoted" if promoted else "refused",
        "promotion.reasons": "; ".join(g.reason for g in gates if (not g.passed) or promoted),
        **{f"gate.{g.name}": ("pass: " if g.passed else "fail: ") + g.reason for g in gates},
        "cell": cand.cell, "seed": int(cand.seed)})
    if promoted:
        registry.set_alias(family, "champion", version)
        registry.set_champion_history(family, registry.champion_history(family) + [version])
    decision.update(version=version, action="promoted" if promoted else "refused",
                    champion=version if promoted else champion,
                    gates=[{"gate": g.name, "passed": g.passed, "reason": g.reason} for g in gates],
                    reasons=[g.reason for g in gates if not g.passed] or ["all gates passed"])
    return _write_decision(family, decision)


def _write_decision(family: str, decision: dict) -> dict:
    out = promotion_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{family}.json").write_text(json.dumps(decision, indent=2))
    return decision


def rollback(cfg: Config, family: str) -> dict:
    """Point `champion` back at the previous champion; a clear error (aliases unchanged) when there is none."""
    from medops.tracking import registry

    hist = registry.champion_history(family)
    current = registry.alias_version(family, "champion")
    if len(hist) < 2:
        raise MedopsError(f"registered model '{family}'", "no previous champion to roll back to "
                          f"(champion history: {hist or 'empty'})", "promote another version first; aliases unchanged")
    prev = hist[-2]
    registry.set_alias(family, "champion", prev)
    registry.set_champion_history(family, hist[:-1])
    registry.tag_version(family, current or hist[-1], {"promotion.rolled_back": f"champion moved back to v{prev}"})
    return _write_decision(family, {"family": family, "action": "rolled_back", "from": current, "champion": prev})
