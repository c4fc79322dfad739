"""The medops command line: the one entry point every orchestrator calls."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer

from medops.errors import MedopsError, ValidationFailed

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="medops: versioned imaging data -> validated, tracked, evaluated models.")
_state: dict = {"params": Path("params.yaml")}


def _cfg():
    from medops.config import load_config

    if "cfg" not in _state:
        _state["cfg"] = load_config(_state["params"])
    return _state["cfg"]


def _fail(exc: Exception, code: int = 2):
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


@app.callback()
def main(params: Path = typer.Option(Path("params.yaml"), "--params", help="parameters file")):
    _state["params"] = params
    _state.pop("cfg", None)


@app.command()
def generate(dataset: str = typer.Argument(..., help="dataset to simulate: breast-trimodal, gaucher-ct, ocular-fundus, "
                                                   "nf-mri or rare-source"),
             out: Optional[Path] = typer.Option(None, help="output folder (default data/raw/<dataset>)"),
             force: bool = typer.Option(False, help="replace an existing dataset folder")):
    """Simulate a dataset: images, manifest.parquet (patient-level split), truth, contact sheet."""
    from medops import stages

    try:
        man = stages.generate(_cfg(), dataset, out or stages.data_dir(dataset), force=force)
    except MedopsError as exc:
        _fail(exc)
    cases = man.drop_duplicates("case_id")
    msg = f"generated {len(cases)} cases ({len(man)} images) split {cases.split.value_counts().to_dict()}"
    if "label" in man:
        msg += f" classes {cases.label.value_counts().to_dict()}"
    typer.echo(msg)


@app.command()
def validate(dataset: str = typer.Option("breast-trimodal", help="dataset name"),
             data: Optional[Path] = typer.Option(None, help="data root (default data/raw/<dataset>)"),
             report: Optional[Path] = typer.Option(None, help="report folder (default reports/validation/<dataset>)")):
    """Validation gate (Great Expectations): non-zero exit and one line per failure."""
    from medops import stages
    from medops.validation import validate_dataset

    try:
        cfg = _cfg()
        s = validate_dataset(data or stages.data_dir(dataset), cfg.validate, report or stages.validation_dir(dataset),
                             split_fractions=cfg.split.fractions, split_seed=cfg.split.seed)
    except ValidationFailed as exc:
        for line in exc.lines:
            typer.echo(f"FAILED {line}", err=True)
        typer.echo(f"validation failed: {len(exc.lines)} failure(s); Data Docs: {exc.report}", err=True)
        raise typer.Exit(1)
    except MedopsError as exc:
        _fail(exc, 1)
    extra = f", classes {s['class_counts']}" if "class_counts" in s else ""
    typer.echo(f"validation passed: {s['n_cases']} cases, {s['n_images']} images{extra}; Data Docs: {s['data_docs']}")


@app.command()
def preprocess(dataset: str = typer.Option("breast-trimodal", help="dataset name")):
    """Paper preprocessing into content-addressed shards (validated data only): paper 000 Table 2 for
    segmentation, paper 002 section 3.2 (histogram equalisation, resize) for classification."""
    from medops import stages
    from medops.data.readers import dataset_info
    from medops.preprocess import preprocess_dataset
    from medops.preprocess.classification import preprocess_classification
    from medops.validation import require_passed

    cfg = _cfg()
    try:
        root, out = stages.data_dir(dataset), stages.preprocessed_dir(dataset)
        require_passed(root, stages.validation_dir(dataset))
        if dataset_info(root).get("task") == "classification":
            idx = preprocess_classification(root, out, cfg.preprocess_cls, split_fractions=cfg.split.fractions,
                                            split_seed=cfg.split.seed)
        else:
            idx = preprocess_dataset(root, out, cfg.preprocess)
    except MedopsError as exc:
        _fail(exc)
    stats = json.loads((stages.preprocessed_dir(dataset) / "preprocess.json").read_text())
    msg = f"preprocessed {len(idx)} cases ({stats['computed']} computed, {stats['cached']} from cache)"
    if stats.get("converted_gray_to_rgb"):
        msg += f"; {stats['converted_gray_to_rgb']} grayscale case(s) replicated to 3 channels for the RGB backbones"
    if "reg_error_after_px" in stats:
        msg += (f"; MRI->US registration error {stats['reg_error_before_px']:.2f} px -> "
                f"{stats['reg_error_after_px']:.2f} px (mean)")
    typer.echo(msg)


@app.command()
def train(family: str = typer.Argument(..., help="model family, e.g. fusion_seg"),
          resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint"),
          cell: Optional[str] = typer.Option(None, help="ablation cell (params.yaml ablation.<family>.cells)"),
          seed: Optional[int] = typer.Option(None, help="seed of the ablation cell"),
          nproc: int = typer.Option(1, help="processes (GPUs) for DistributedDataParallel via torchrun"),
          force: bool = typer.Option(False, "--force", help="train again even if a finished run has the same inputs"),
          pretrain: Optional[str] = typer.Option(None, "--pretrain", help="pretrain this backbone on the family's "
                                                 "source dataset (transfer families)")):
    """Train a family (or one ablation cell, or a source-domain pretraining) with the shared engine; logs to MLflow."""
    from medops import stages

    if nproc > 1:  # relaunch this same command under torchrun, one process per device
        import subprocess
        import sys

        args = ["train", family] + (["--resume"] if resume else []) + (["--cell", cell] if cell else []) \
            + (["--seed", str(seed)] if seed is not None else []) + (["--force"] if force else []) \
            + (["--pretrain", pretrain] if pretrain else [])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "medops.cli", "--params", str(_state["params"]), *args]
        raise typer.Exit(subprocess.call(cmd))
    try:
        info = stages.train(_cfg(), family, resume=resume, progress=True, cell=cell, seed=seed, force=force,
                            pretrain=pretrain)
    except MedopsError as exc:
        _fail(exc)
    if "rank" in info:
        return
    if info.get("skipped"):
        typer.echo(f"{family}{'/' + cell if cell else ''}: already trained with these inputs "
                   f"({info.get('status')}, MLflow run {info['run_id']}); nothing to do (--force to retrain)")
        return
    if info.get("status") == "failed":
        typer.echo(f"cell {cell} seed {seed} FAILED ({info['reason']}); marked in MLflow run {info['run_id']}", err=True)
        return
    what = f"/{cell}" if cell else (f"/pretrain/{pretrain}" if pretrain else "")
    typer.echo(f"trained {family}{what}: MLflow run {info['run_id']}")


@app.command()
def evaluate(family: str = typer.Argument(..., help="model family, e.g. fusion_seg")):
    """Evaluate on the test split: metrics, per-case CSV, predicted masks, figures, baseline."""
    from medops import stages
    from medops.families import get_family
    from medops.tracking import ui_command

    try:
        m = stages.evaluate(_cfg(), family)
    except MedopsError as exc:
        _fail(exc)
    typer.echo(f"test set ({m['n_test_cases']} cases, profile {_cfg().profile}):")
    typer.echo(get_family(family).format_table(m))
    typer.echo(f"outputs: {stages.report_dir(family)}/ (metrics.json, per_case.csv, predictions/, figures/)")
    typer.echo(f"MLflow UI: {ui_command('.', m['run'])}")


@app.command()
def report(family: str = typer.Argument(..., help="model family, e.g. fusion_seg")):
    """Aggregate ablation cells: paper-shaped tables (mean ± 95 % CI), claims, loss and missing-modality tables."""
    from medops import stages

    try:
        s = stages.report(_cfg(), family)
    except MedopsError as exc:
        _fail(exc)
    out = stages.ablation_report_dir(family)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"{s['n_finished']}/{s['n_cells']} cells finished; report: {out}/report.md "
               f"(logged to MLflow parent run {s.get('parent_run_id')})")


@app.command()
def promote(family: str = typer.Argument(..., help="model family, e.g. fusion_seg"),
            rollback: bool = typer.Option(False, "--rollback", help="restore the previous champion")):
    """Register the best cell as `challenger`; move `champion` only when every gate passes."""
    from medops import stages

    try:
        d = stages.rollback(_cfg(), family) if rollback else stages.promote(_cfg(), family)
    except MedopsError as exc:
        _fail(exc)
    if d["action"] == "rolled_back":
        typer.echo(f"{family}: champion rolled back from v{d['from']} to v{d['champion']}")
        return
    typer.echo(f"{family}: candidate {d['candidate_cell']}/seed{d['candidate_seed']} -> version {d['version']}: "
               f"{d['action'].upper()}")
    for g in d.get("gates", []):
        typer.echo(f"  [{'PASS' if g['passed'] else 'FAIL'}] {g['gate']}: {g['reason']}")
    for r in d.get("reasons", []) if d["action"] == "unchanged" else []:
        typer.echo(f"  {r}")
    typer.echo(f"  champion: {'v' + str(d['champion']) if d.get('champion') else 'none'}")


@app.command()
def predict(model: str = typer.Option("models:/fusion_seg@champion", help="MLflow model URI"),
            input: Path = typer.Option(..., "--input", help="segmentation: case folder (us/mg/mri images) or "
                                       "manifest.parquet; classification: an image or a folder of images"),
            out: Path = typer.Option(Path("predictions"), help="output folder"),
            threshold: float = typer.Option(0.5, help="probability threshold")):
    """Segmentation: masks (PNG) + JSON per case. Classification: class probabilities + Grad-CAM heatmap
    per image. The same preprocessing as training; refuses invalid input."""
    from medops.predict import predict as run_predict
    from medops.predict import predict_classification, task_of

    try:
        if task_of(model) == "classification":
            res = predict_classification(model, input, out, _cfg().preprocess_cls)
            for r in res:
                probs = ", ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
                typer.echo(f"{r['case_id']}: {r['predicted']} ({probs}) -> {out / r['gradcam_png']}")
            return
        res = run_predict(model, input, out, _cfg().validate, _cfg().preprocess, threshold)
    except ValidationFailed as exc:
        for line in exc.lines:
            typer.echo(f"REFUSED {line}", err=True)
        typer.echo(f"input refused: {len(exc.lines)} validation failure(s); nothing predicted", err=True)
        raise typer.Exit(1)
    except MedopsError as exc:
        _fail(exc)
    for r in res:
        typer.echo(f"{r['case_id']}: tumour fraction {r['tumour_fraction']:.3f}, max p {r['max_probability']:.2f} "
                   f"-> {out / r['mask_png']}")


@app.command()
def show(family: str = typer.Argument(..., help="model family, e.g. fusion_seg")):
    """Print the last evaluation's test table and the command that opens its MLflow run."""
    from medops import stages
    from medops.families import get_family
    from medops.tracking import ui_command

    try:
        format_table = get_family(family).format_table
    except MedopsError as exc:
        _fail(exc)
    mpath = stages.report_dir(family) / "metrics.json"
    if not mpath.exists():
        _fail(MedopsError(str(mpath), "evaluated: no metrics yet", f"run `dvc repro` or `medops evaluate {family}`"))
    m = json.loads(mpath.read_text())
    run = json.loads((stages.model_dir(family) / "run.json").read_text())
    typer.echo(f"test set ({m['n_test_cases']} cases, profile {_cfg().profile}):")
    typer.echo(format_table(m))
    rep = stages.ablation_report_dir(family) / "report.md"
    if rep.exists():
        text = rep.read_text()
        typer.echo("\n" + text.split("\n## Loss curve")[0].strip())
        typer.echo(f"(full ablation report: {rep})")
    dec = stages.promotion_dir() / f"{family}.json"
    if dec.exists():
        d = json.loads(dec.read_text())
        typer.echo(f"\nregistry: {family} champion = v{d.get('champion')}  (last decision: {d['action']} "
                   f"version {d.get('version', d.get('from'))}; {'; '.join(d.get('reasons', []))})")
    typer.echo(f"MLflow UI: {ui_command('.', run)}")


@app.command()
def profile(name: str = typer.Argument(..., help="smoke | quick | paper")):
    """Switch the active profile in params.yaml (then run `dvc repro`)."""
    from medops.config import PROFILES

    if name not in PROFILES:
        _fail(MedopsError(f"profile '{name}'", "unknown profile", f"use one of {list(PROFILES)}"))
    p = _state["params"]
    text = p.read_text()
    new, n = re.subn(r"(?m)^profile:\s*\S+", f"profile: {name}", text, count=1)
    if n == 0:
        new = f"profile: {name}\n" + text
    p.write_text(new)
    typer.echo(f"profile set to {name} in {p}")


if __name__ == "__main__":
    app()
