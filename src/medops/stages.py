"""Stage functions behind the CLI verbs (pure wiring of library pieces)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from medops.config import Config
from medops.data.io import file_sha256
from medops.errors import DataError, MedopsError
from medops.families import get_family

def known_datasets() -> list[str]:
    from medops.data.rare_disease import DATASETS as CLS

    return ["breast-trimodal", *CLS]


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
    """Simulate ``dataset`` into ``out`` (written to a temporary folder, then moved: an existing
    dataset is replaced only with --force, and never half-overwritten); save its contact sheet."""
    from medops.data import breast_trimodal, rare_disease

    if dataset not in known_datasets():
        raise DataError(f"dataset '{dataset}'", "unknown dataset", f"use one of {known_datasets()}")
    if out.exists() and any(out.iterdir()) and not force:
        raise DataError(str(out), "no_overwrite: the output folder already holds a dataset",
                        "choose another --out, or pass --force to replace it (dvc repro removes it for you)")
    if dataset in rare_disease.DATASETS:
        rd = cfg.rare_disease
        if dataset not in rd.datasets:
            raise DataError(f"dataset '{dataset}'", "no size in params.yaml",
                            f"add rare_disease.datasets.{dataset}: {{n_cases: ..., prevalence: ...}}")
        spec = rd.datasets[dataset]

        def simulate(tmp):
            return rare_disease.generate(dataset, int(spec["n_cases"]), float(spec.get("prevalence", 0.5)), rd.size,
                                         rd.seed, cfg.split, tmp, workers=rd.workers)
        sheet = rare_disease.contact_sheet
    else:
        def simulate(tmp):
            return breast_trimodal.generate(cfg.generate, cfg.split, tmp)
        sheet = breast_trimodal.contact_sheet
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
    try:
        manifest = simulate(tmp)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sheet(out, Path("reports/data") / f"{dataset}_contact_sheet.png")
    return manifest


def cell_dir(family: str, cell: str, seed: int) -> Path:
    return model_dir(family) / "cells" / cell / f"seed{seed}"


def build_model(model_cfg, **extra):
    """The registered model named ``model_cfg.arch`` built from the config's fields (+ ``extra``,
    e.g. the number of classes read from the dataset)."""
    from medops.models import get_model

    kw = asdict(model_cfg)
    return get_model(kw.pop("arch"), **kw, **extra)


def build_for_checkpoint(fam, fcfg, model_cfg, index):
    """The network to load a checkpoint into: no starting weights needed (they come from the file)."""
    import dataclasses

    if hasattr(model_cfg, "weights"):
        model_cfg = dataclasses.replace(model_cfg, weights="none")
    return build_model(model_cfg, **fam.model_kwargs(fcfg, model_cfg, index))


def _fingerprint(model_cfg, train_cfg, cell: str | None, index: pd.DataFrame, extra: dict | None = None) -> str:
    """What a training run depends on: model and training config, cell, the exact preprocessed cases
    (and, for transfer, the source checkpoint it starts from)."""
    import hashlib

    payload = json.dumps({"model": asdict(model_cfg), "train": asdict(train_cfg), "cell": cell, "extra": extra or {},
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


def _pretrain_setup(fam, fcfg, backbone: str):
    """Source-domain pretraining of one backbone: the family's model trained from scratch on the
    source dataset with plain cross-entropy (what `weights: source` starts from)."""
    import dataclasses

    from medops.families import pretrained_dir

    if fam.task_type != "classification":
        raise MedopsError(f"--pretrain for {fam.name}", "only transfer-learning families have a pretraining stage",
                          "drop --pretrain")
    if backbone not in fcfg.pretrain.backbones:
        raise MedopsError(f"--pretrain {backbone}", "not listed for pretraining",
                          f"use one of {list(fcfg.pretrain.backbones)} or add it to {fam.name}.pretrain.backbones")
    model_cfg = dataclasses.replace(fcfg.model, backbone=backbone, weights="none", strategy="fine_tune")
    p = fcfg.pretrain
    train_cfg = dataclasses.replace(fcfg.train, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, loss="ce",
                                    class_weights="none", early_stopping=0)
    return fcfg.data.source, model_cfg, train_cfg, pretrained_dir(fam.name, backbone)


def train(cfg: Config, family: str, *, resume: bool = False, progress: bool = True,
          cell: str | None = None, seed: int | None = None, force: bool = False, pretrain: str | None = None) -> dict:
    """Train the family's model, one ablation cell (``cell`` + ``seed``), or (``pretrain``) a backbone
    on the source domain, and track it in MLflow.

    A cell also evaluates itself on the test split (per-case metrics: missing-modality conditions
    for segmentation, probabilities and Grad-CAM localisation for classification). A cell that
    fails (e.g. non-finite loss) is marked FAILED in MLflow and in its ``status.json``, and
    returns normally so the other cells go on.
    """
    import torch

    from medops import tracking
    from medops.engine import Trainer, load_checkpoint, seed_everything
    from medops.engine.distributed import init_distributed, shutdown
    from medops.preprocess import load_index
    from medops.validation import require_passed

    fam = get_family(family)
    fcfg = cfg.family(family)
    dinfo = init_distributed()  # one process unless launched by torchrun (medops train --nproc N)
    model_cfg, train_cfg, out, parent = fcfg.model, fcfg.train, model_dir(family), None
    dataset = fam.default_dataset(fcfg)
    if pretrain is not None:
        if cell is not None:
            raise MedopsError("--pretrain with --cell", "a pretraining run is not an ablation cell", "pass one of them")
        dataset, model_cfg, train_cfg, out = _pretrain_setup(fam, fcfg, pretrain)
    elif cell is not None:
        abl = fcfg.ablation
        abl.check(family)
        if seed is None:
            raise MedopsError("--seed", "an ablation cell needs a seed", f"pass one of {list(abl.seeds)}")
        model_cfg = abl.cell_model(cell, fcfg.model)
        train_cfg = abl.cell_train(cell, fcfg.train, seed)
        dataset = abl.cell_dataset(cell, dataset)
        out = cell_dir(family, cell, seed)
    data, pre = data_dir(dataset), preprocessed_dir(dataset)
    validation = require_passed(data, validation_dir(dataset))
    index = load_index(pre)
    extra = fam.model_kwargs(fcfg, model_cfg, index)
    src = extra.get("source_checkpoint")
    depends = {"source_checkpoint": file_sha256(src)} if getattr(model_cfg, "weights", "") == "source" \
        and src and Path(src).exists() else {}
    kind = f"pretrain:{pretrain}" if pretrain else cell
    fingerprint = _fingerprint(model_cfg, train_cfg, kind, index, depends)
    if not resume and not force and dinfo.main:
        done = _already_done(out, fingerprint, kind)
        if done is not None:
            return done
    train_ds, val_ds = fam.datasets(pre, index, fcfg)
    seed_everything(train_cfg.seed)  # the initial weights are part of the run's seed
    net = build_model(model_cfg, **extra)
    task = fam.task(net, train_cfg, dataset=train_ds)
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
            "dataset": dataset, "dataset_version": tracking.dataset_version(data),
            "validation": validation["status"], "validation_manifest_sha256": validation["manifest_sha256"],
            "cell": cell or ("pretrain" if pretrain else "main"), "seed": train_cfg.seed,
            **{f"factor.{k}": v for k, v in (fcfg.ablation.levels(cell) if cell else {}).items()}}
    if getattr(task, "class_weight", None) is not None:
        tags["class_weights"] = json.dumps([round(float(w), 4) for w in task.class_weight])
    if hasattr(train_ds, "labels"):
        from medops.families import classes_of

        tags["classes"] = json.dumps(classes_of(index))
        tags["train_class_counts"] = json.dumps(torch.bincount(train_ds.labels).tolist())
        tags["task"] = fam.task_type
    if cell is not None and not prev:
        parent = tracking.ablation_parent_run(family, fcfg.ablation, tags, prefix=cfg.tracking.experiment_prefix)
    run_name = (f"{family}/{cell}/seed{seed}" if cell else f"{family}/pretrain/{pretrain}" if pretrain
                else f"{family}/main")
    run = tracking.start_or_resume_run(family, run_name, tags=tags, prefix=cfg.tracking.experiment_prefix,
                                       run_id=prev.get("run_id"), parent_run_id=parent)
    (out / "status.json").unlink(missing_ok=True)
    try:
        info = tracking.mlflow_run.write_run_file(run_file, run)
        if not prev:
            tracking.log_params_and_config(cfg.raw | {"family": family, "profile": cfg.profile,
                                                      "cell": cell or ("pretrain" if pretrain else "main"),
                                                      "dataset_used": dataset,
                                                      "resolved_model": asdict(model_cfg),
                                                      "resolved_train": asdict(train_cfg),
                                                      "world_size": dinfo.world})
        trainer = Trainer(task, train_cfg, out, logger=tracking.MlflowLogger(run.info.run_id), progress=progress)
        history = trainer.fit(train_ds, val_ds, resume=resume)
        pd.DataFrame(history).to_csv(out / "history.csv", index=False)
        best = load_checkpoint(out / "best.pt")
        net.load_state_dict(best["model"])
        best_rec = next((h for h in history if h["epoch"] == best["epoch"]), history[-1])
        train_metrics = {"best_epoch": best["epoch"], f"best_{task.monitor}": best[task.monitor],
                         "selection_score": best_rec.get(fam.selection, float("nan")), "selection_metric": fam.selection,
                         "epochs": len(history), "early_stopped": len(history) < train_cfg.epochs,
                         "final_train_loss": history[-1]["train_loss"], "final_val_loss": history[-1]["val_loss"],
                         "fingerprint": fingerprint}
        (out / "train_metrics.json").write_text(json.dumps(train_metrics, indent=2))
        if hasattr(net, "attention_weights_full"):
            with torch.no_grad():
                net.eval()(val_ds.images[:2].float())  # fresh attention weights from the best model
            (out / "attention_weights.json").write_text(json.dumps(net.attention_weights_full()))
            tracking.log_artifact(out / "attention_weights.json", "attention")
        tracking.log_artifact(out / "history.csv", "training")
        if pretrain is not None:
            (out / "status.json").write_text(json.dumps({"status": "finished", **train_metrics}, indent=2))
        elif cell is None:
            info["model_uri"] = tracking.log_model(torch.nn.Sequential(net, fam.activation()),
                                                   val_ds.images[:1].float().numpy())
            if fam.task_type == "classification":
                tracking.log_artifact(out / "best.pt", "checkpoint")
        else:
            test = fam.evaluate_cell(net, pre, index, out, fcfg=fcfg, model_cfg=model_cfg)
            import mlflow

            mlflow.log_metrics({f"test_{k}": v for k, v in test["full"].items() if v == v})
            tracking.log_artifact(out / "per_case.csv", "evaluation")
            if (out / "figures").exists():
                tracking.log_artifact(out / "figures", "figures")
            (out / "status.json").write_text(json.dumps({"status": "finished", **train_metrics, "dataset": dataset,
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
    dataset = fam.default_dataset(fcfg)
    mdir, out, pre = model_dir(family), report_dir(family), preprocessed_dir(dataset)
    if not (mdir / "best.pt").exists():
        raise MedopsError(str(mdir / "best.pt"), "trained: no checkpoint", f"run `medops train {family}` first")
    index = load_index(pre)
    net = build_for_checkpoint(fam, fcfg, fcfg.model, index)
    net.load_state_dict(load_checkpoint(mdir / "best.pt")["model"])
    metrics = fam.evaluate(net, pre, index, out, history_csv=mdir / "history.csv", fcfg=fcfg, model_cfg=fcfg.model)
    run = json.loads((mdir / "run.json").read_text())
    tracking.start_or_resume_run(family, "main", tags={"evaluated": "true"}, run_id=run["run_id"])
    import mlflow

    num = lambda d: {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and v == v}  # noqa: E731
    mlflow.log_metrics({f"test_{k}": v for k, v in num(metrics["model"]).items()})
    mlflow.log_metrics({f"baseline_test_{k}": v for k, v in num(metrics["baseline"]).items()})
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

    fam = get_family(family)
    fcfg = cfg.family(family)
    fcfg.ablation.check(family)
    out = ablation_report_dir(family)
    summary = fam.report(model_dir(family) / "cells", fcfg.ablation, out, alpha=fcfg.promote.alpha,
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


DATA_DESCRIPTION = {
    "segmentation": "tri-modal breast images (US, MG, MRI)",
    "classification": "rare-disease images (CT, fundus or brain MRI, see the dataset tag)",
}


def _model_card(family: str, version: str, cand, tags: dict, gates, fcfg, cell_table_row: dict | None) -> str:
    fam = get_family(family)
    lines = [f"# Model card — {family} version {version}", "",
             "**Intended use:** research use only, not for diagnosis. Trained and tested on *simulated* "
             f"{DATA_DESCRIPTION[fam.task_type]}; performance on real patients is unknown.", "",
             "## Provenance", "",
             f"- MLflow run: `{cand.run_id}` (cell `{cand.cell}`, seed {cand.seed})",
             f"- Dataset: `{tags.get('dataset')}`, version `{tags.get('dataset_version')}`",
             f"- Validation: **{tags.get('validation')}** (manifest sha256 `{tags.get('validation_manifest_sha256', '')[:16]}…`)",
             f"- Code: git `{tags.get('git_commit')}`; profile `{tags.get('profile')}`",
             f"- Model: {', '.join(f'{k}={v}' for k, v in tags.items() if k.startswith('factor.'))}", "",
             "## Test metrics (this seed)", "", *fam.card(cand), ""]
    if cell_table_row:
        lines += ["## This cell over all seeds (mean ± 95 % CI)", "",
                  " ".join(f"{m.upper()} {100 * cell_table_row[f'{m}_mean']:.1f} ± {100 * cell_table_row[f'{m}_ci95']:.1f} %;"
                           for m in fam.metrics if f"{m}_mean" in cell_table_row), ""]
    lines += ["## Promotion gates", ""] + [f"- {'PASS' if g.passed else 'FAIL'} `{g.name}`: {g.reason}" for g in gates]
    rep = ablation_report_dir(family) / "report.md"
    if rep.exists():
        lines += ["", "## Ablation (from `medops report`)", "", rep.read_text().split("\n", 1)[1]]
    lines += ["", "## Known limitations", "",
              "- Simulated data calibrated on image appearance, not on clinical data; no external validation.",
              "- 2-D images at the profile's image size; one lesion per case.",
              "- Confidence intervals are over few seeds (t-interval); per-case tests assume independent cases."]
    cell_figs = cell_dir(family, cand.cell, int(cand.seed)) / "figures"
    figs = sorted((ablation_report_dir(family) / "figures").glob("*.png")) + sorted(cell_figs.glob("*.png"))
    if figs:
        lines += ["", "## Figures", ""] + [f"![{f.stem}](model_card_figures/{f.name})" for f in figs]
    return "\n".join(lines) + "\n"


def promote(cfg: Config, family: str) -> dict:
    """Register the best ablation cell as `challenger`; move `champion` only when every gate passes."""
    import torch

    from medops.engine import load_checkpoint
    from medops.experiments.promotion import evaluate_gates, select_candidate
    from medops.experiments.report import collect
    from medops import tracking
    from medops.preprocess import load_index
    from medops.tracking import registry

    fam = get_family(family)
    fcfg = cfg.family(family)
    abl, pc = fcfg.ablation, fcfg.promote
    cells = collect(model_dir(family) / "cells", abl, fam.metrics)
    home = fam.default_dataset(fcfg)  # the registered model serves the family's dataset: only its cells compete
    cells = cells[cells.cell.map(lambda c: abl.cell_dataset(c, home) == home)]
    try:
        cand = select_candidate(cells)
    except ValueError as exc:
        raise MedopsError(f"ablation of {family}", str(exc), "run the ablation (dvc repro) first") from exc
    cdir = cell_dir(family, cand.cell, int(cand.seed))
    tags = registry.run_tags(cand.run_id)
    pre = preprocessed_dir(abl.cell_dataset(cand.cell, fam.default_dataset(fcfg)))
    index = load_index(pre)
    net = build_for_checkpoint(fam, fcfg, abl.cell_model(cand.cell, fcfg.model), index)
    net.load_state_dict(load_checkpoint(cdir / "best.pt")["model"])
    example = np.load(pre / index[index.split == "test"].shard.iloc[0])["image"][None].astype(np.float32)
    model_uri = registry.ensure_model_logged(cand.run_id, torch.nn.Sequential(net.eval(), fam.activation()), example,
                                             checkpoint=cdir / "best.pt" if fam.task_type == "classification" else None)
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
    cand_cases = pd.read_csv(cdir / "per_case.csv")
    champ_cases = None
    if champion is not None:
        champ_run = registry.version_run_id(family, champion)
        tmp = Path(tempfile.mkdtemp(prefix="medops-champ-"))
        champ_cases = pd.read_csv(registry.download(champ_run, "evaluation/per_case.csv", tmp))
    gates = evaluate_gates(validation=tags.get("validation", "unknown"), test_mean=float(cand[f"test_{pc.metric}"]),
                           floor=pc.floor, metric=pc.metric, candidate_cases=cand_cases, champion_cases=champ_cases,
                           alpha=pc.alpha, compare=lambda a, b: fam.compare(a, b, pc.metric))
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
    if (cdir / "figures").exists():  # e.g. the candidate's Grad-CAM panels
        tracking.log_artifacts_to(cand.run_id, cdir / "figures", "model_card_figures")
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
