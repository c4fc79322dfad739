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
        try:
            _state["cfg"] = load_config(_state["params"])
        except MedopsError as exc:
            _fail(exc)
        from medops.data.io import set_pixel_limit

        set_pixel_limit(_state["cfg"].validate.max_image_pixels)
    return _state["cfg"]


def _fail(exc: Exception, code: int = 2):
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def _step(step: str, family: str | None = None, dataset: str | None = None) -> None:
    """One line per DVC stage saying which family and step it is (``[fusion_seg] preprocess breast-trimodal``)."""
    if family is None and dataset is not None:
        by = (_cfg().raw.get("orchestration", {}) or {}).get("datasets", {}) or {}
        family = next((f for f, ds in by.items() if dataset in (ds or [])), dataset)
    typer.echo(f"[{family}] {step}" + (f" {dataset}" if dataset else ""), err=True)


def _log_imports(path: str) -> None:
    """At exit, append this command and the medops modules it imported to ``path`` (one JSON line):
    what the DVC dependency check compares with each stage's ``deps``."""
    import atexit
    import sys

    def write():
        mods = sorted({Path(m.__file__).resolve().as_posix() for n, m in list(sys.modules.items())
                       if n.split(".")[0] == "medops" and getattr(m, "__file__", None)})
        with open(path, "a") as f:
            f.write(json.dumps({"argv": sys.argv[1:], "modules": mods}) + "\n")

    atexit.register(write)


def _torch_threads(value: str) -> None:
    """``MEDOPS_TORCH_THREADS=n`` (set by `medops run` for stages it runs several at a time): torch's intra-op
    threads for this command — in a fork of the warm server, where torch is already imported, and for a
    fresh process through OMP_NUM_THREADS, which torch reads when it is imported."""
    import os
    import sys

    if not value:
        return
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        _fail(MedopsError(f"MEDOPS_TORCH_THREADS={value}", "not a positive number of threads",
                          "unset it, or set a whole number >= 1"))
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


@app.callback()
def main(params: Path = typer.Option(Path("params.yaml"), "--params", help="parameters file")):
    import os

    _state["params"] = params
    _state.pop("cfg", None)
    _torch_threads(os.environ.get("MEDOPS_TORCH_THREADS", ""))
    if os.environ.get("MEDOPS_IMPORTS_LOG"):
        _log_imports(os.environ["MEDOPS_IMPORTS_LOG"])


@app.command()
def generate(dataset: str = typer.Argument(..., help="dataset to simulate (see `medops families`)"),
             out: Optional[Path] = typer.Option(None, help="output folder (default data/raw/<dataset>)"),
             force: bool = typer.Option(False, help="replace an existing dataset folder")):
    """Simulate a dataset: images, manifest.parquet (patient-level split), truth, contact sheet."""
    from medops.runs.generate import generate as run

    _step("generate", dataset=dataset)
    try:
        man = run(_cfg(), dataset, out, force=force)
    except MedopsError as exc:
        _fail(exc)
    cases = man.drop_duplicates("case_id")
    msg = f"generated {len(cases)} cases ({len(man)} images) split {cases.split.value_counts().to_dict()}"
    if "label" in man:
        msg += f" classes {cases.label.value_counts().to_dict()}"
    typer.echo(msg)


@app.command()
def validate(dataset: Optional[str] = typer.Option(None, help="dataset name (data/raw/<dataset>)"),
             data: Optional[Path] = typer.Option(None, help="data root (default data/raw/<dataset>)"),
             report: Optional[Path] = typer.Option(None, help="report folder (default reports/validation/<dataset>)")):
    """Validation gate (Great Expectations): non-zero exit and one line per failure."""
    from medops.runs.validate import validate as run

    if dataset is None and data is None:
        _fail(MedopsError("--dataset", "no dataset named", "pass --dataset <name> or --data <folder>"), 1)
    _step("validate", dataset=dataset or data.name)
    try:
        s = run(_cfg(), dataset or data.name, data, report)
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
def preprocess(dataset: str = typer.Option(..., help="dataset name (data/raw/<dataset>, validated)")):
    """The paper preprocessing of the dataset's family into content-addressed shards (validated data only)."""
    from medops.runs.preprocess import preprocess as run

    _step("preprocess", dataset=dataset)
    try:
        _, msg = run(_cfg(), dataset)
    except MedopsError as exc:
        _fail(exc)
    typer.echo(msg)


@app.command()
def train(family: str = typer.Argument(..., help="model family (see `medops families`)"),
          resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint"),
          cell: Optional[str] = typer.Option(None, help="ablation cell (params.yaml ablation.<family>.cells)"),
          seed: Optional[int] = typer.Option(None, help="seed of the ablation cell"),
          nproc: int = typer.Option(1, min=1, max=64, help="processes (GPUs) for DistributedDataParallel via torchrun"),
          force: bool = typer.Option(False, "--force", help="train again even if a finished run has the same inputs"),
          pretrain: Optional[str] = typer.Option(None, "--pretrain", help="pretrain this backbone on the family's "
                                                 "source dataset (transfer families)")):
    """Train a family (or one ablation cell, or a source-domain pretraining) with the shared engine; logs to MLflow."""
    from medops.runs.train import train as run

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
        info = run(_cfg(), family, resume=resume, progress=True, cell=cell, seed=seed, force=force,
                   pretrain=pretrain)
    except MedopsError as exc:
        _fail(exc)
    except Exception as exc:  # SIGTERM (preemption): the last step is saved; the retry resumes
        from medops.engine.trainer import Preempted

        if not isinstance(exc, Preempted):
            raise
        typer.echo(f"{family}: {exc} (exit {Preempted.EXIT_CODE})", err=True)
        raise typer.Exit(Preempted.EXIT_CODE)
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
def evaluate(family: str = typer.Argument(..., help="model family (see `medops families`)")):
    """Evaluate on the test split: metrics, per-case CSV, figures, baseline."""
    from medops import layout
    from medops.families import get_family
    from medops.runs.evaluate import evaluate as run
    from medops.tracking import ui_command

    _step("evaluate the main model on the test split", family)
    try:
        m = run(_cfg(), family)
    except MedopsError as exc:
        _fail(exc)
    typer.echo(f"test set ({m['n_test_cases']} cases, profile {_cfg().profile}):")
    typer.echo(get_family(family, _cfg()).format_table(m))
    typer.echo(f"outputs: {layout.report_dir(family)}/ (metrics.json, per_case.csv, figures/)")
    typer.echo(f"MLflow UI: {ui_command('.', m['run'])}")


@app.command()
def report(family: str = typer.Argument(..., help="model family (see `medops families`)")):
    """Aggregate ablation cells: paper-shaped tables (mean ± 95 % CI), claims, figures."""
    from medops import layout
    from medops.runs.report import report as run

    _step("ablation report", family)
    try:
        s = run(_cfg(), family)
    except MedopsError as exc:
        _fail(exc)
    out = layout.ablation_report_dir(family)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"{s['n_finished']}/{s['n_cells']} cells finished; report: {out}/report.md "
               f"(logged to MLflow parent run {s.get('parent_run_id')})")


@app.command()
def promote(family: str = typer.Argument(..., help="model family (see `medops families`)"),
            rollback: bool = typer.Option(False, "--rollback", help="restore the previous champion")):
    """Register the best cell as `challenger`; move `champion` only when every gate passes."""
    from medops.runs import promote as run

    _step("rollback" if rollback else "promote", family)
    try:
        d = run.rollback(_cfg(), family) if rollback else run.promote(_cfg(), family)
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
def predict(model: Optional[str] = typer.Option(None, help="MLflow model URI, e.g. models:/<family>@champion "
                                               "(default: the champion of the first family in orchestration.families)"),
            input: Path = typer.Option(..., "--input", help="what the model's family reads: a case folder or "
                                       "manifest.parquet (multi-modal), an image or a folder of images"),
            out: Path = typer.Option(Path("predictions"), help="output folder"),
            threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="probability threshold in [0, 1]"),
            overwrite: bool = typer.Option(False, "--overwrite", help="write into a non-empty --out (replaces files "
                                           "of the same name, deletes nothing)")):
    """Predict with a registered model: its family's preprocessing, outputs (masks, probabilities,
    Grad-CAM) and a JSON summary per case. Refuses invalid input."""
    from medops.runs.predict import predict as run

    if model is None:
        fams = _cfg().raw.get("orchestration", {}).get("families") or []
        if not fams:
            _fail(MedopsError("--model", "no model named", "pass --model models:/<family>@champion"))
        model = f"models:/{fams[0]}@champion"
    try:
        fam, res = run(_cfg(), model, input, out, threshold, overwrite)
    except ValidationFailed as exc:
        for line in exc.lines:
            typer.echo(f"REFUSED {line}", err=True)
        typer.echo(f"input refused: {len(exc.lines)} validation failure(s); nothing predicted", err=True)
        raise typer.Exit(1)
    except MedopsError as exc:
        _fail(exc)
    for r in res:
        typer.echo(fam.describe_prediction(r, out))


@app.command()
def show(family: str = typer.Argument(..., help="model family (see `medops families`)")):
    """Print the last evaluation's test table, the ablation tables and claims, the registry decision and the
    command that opens its MLflow run."""
    from medops.runs.summary import show_text

    try:
        typer.echo(show_text(_cfg(), family))
    except MedopsError as exc:
        _fail(exc)


@app.command("run")
def run_(family: Optional[str] = typer.Option(None, "--family", help="one or several families, comma-separated "
                                               "(default: every family in orchestration.families)"),
         warm: bool = typer.Option(True, "--warm/--cold", help="run the stages' medops commands in forks of one "
                                   "process that has torch, MONAI and MLflow imported (saves ~15 s per stage "
                                   "on 2 CPU cores; --cold: a fresh process each)"),
         workers: Optional[int] = typer.Option(None, "--workers", help="stages of a family's ablation run at once, "
                                               "each with cores/N torch threads (default: orchestration."
                                               "local_workers; 1: one stage at a time)")):
    """Reproduce each family's stages (`dvc repro`), then show every family's results, the time of each, and
    write the summary page reports/index.html (what `make run` calls)."""
    from medops.runs.pipeline import resolve_families, run_families

    try:
        fams = resolve_families(_cfg(), family)
        res = run_families(_cfg(), fams, warm=warm, workers=workers)
    except MedopsError as exc:
        _fail(exc)
    failed = [f for f, r in res["families"].items() if r["status"] != "ok"]
    if failed:
        typer.echo(f"failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@app.command()
def inputs(stage: str = typer.Argument(..., help="<pipeline file>:<stage>, e.g. dvc.yaml:ablation_inputs")):
    """Write one small file with the content digests of a DVC stage's deps and params (the ablation stages
    depend on it instead of on ~40 paths each, which keeps dvc.lock small; see medops.runs.inputs)."""
    from medops.runs.inputs import write_inputs

    try:
        out, rec = write_inputs(stage)
    except MedopsError as exc:
        _fail(exc)
    # one line for a person following `make run`: the folder (models/<family>/) names the family
    typer.echo(f"[{out.parent.name}] {stage.rpartition(':')[2]}: {len(rec['paths'])} paths, {len(rec['params'])} "
               f"params -> {out.relative_to(Path.cwd().resolve())}", err=True)


@app.command()
def summary(out: Path = typer.Option(Path("reports/index.html"), help="the page to write")):
    """Write the summary page of every family (static HTML, relative links: open it from the file system)."""
    from medops.runs.summary import write_summary

    try:
        page = write_summary(_cfg(), out)
    except MedopsError as exc:
        _fail(exc)
    typer.echo(f"summary page: {page}")


@app.command()
def families():
    """List the registered model families with their datasets."""
    from medops.families import get_family, list_families

    _cfg()  # loads the plugin modules params.yaml names
    for name in list_families():
        fam = get_family(name)
        typer.echo(f"{name}: datasets {list(fam.datasets) or '(your own)'}; selection {fam.selection}")


@app.command()
def deidentify(input: Path = typer.Option(..., "--input", help="folder of DICOM files (your own data)"),
               out: Path = typer.Option(..., help="new folder for the de-identified copy"),
               key: Path = typer.Option(Path.home() / ".medops" / "deid.key", help="secret key, kept OUTSIDE the "
                                        "dataset (created on first use); <key>.map.csv re-identifies"),
               force: bool = typer.Option(False, "--force", help="replace a non-empty --out")):
    """De-identify DICOM files (PS3.15 Annex E basic profile, modified dates, consistent UIDs and pseudonyms)."""
    from medops.data.deidentify import deidentify_folder

    try:
        r = deidentify_folder(input, out, key, force=force)
    except MedopsError as exc:
        _fail(exc)
    typer.echo(f"de-identified {r['dicom']} DICOM file(s) of {r['patients']} patient(s) ({r['files']} files) -> "
               f"{r['out']}; key and re-identification table: {key} (keep them private)")


@app.command()
def profile(name: str = typer.Argument(..., help="smoke | quick | paper")):
    """Switch the active profile in params.yaml (then run `dvc repro`)."""
    from medops.config import PROFILES

    if name not in PROFILES:
        _fail(MedopsError(f"profile '{name}'", "unknown profile", f"use one of {list(PROFILES)}"))
    p = _state["params"]
    if not p.exists():
        _fail(MedopsError(str(p), "parameters file not found", "run from the project root or pass --params"))
    text = p.read_text()
    new, n = re.subn(r"(?m)^profile:\s*\S+", f"profile: {name}", text, count=1)
    if n == 0:
        new = f"profile: {name}\n" + text
    p.write_text(new)
    typer.echo(f"profile set to {name} in {p}")


def main() -> None:
    """The ``medops`` console script: inside ``medops run`` (``MEDOPS_WARM`` set) the command runs in a
    fork of the warm server that has the heavy libraries imported (medops.warm); otherwise here."""
    import os
    import sys

    if os.environ.get("MEDOPS_WARM", "0") != "0":
        from medops.warm import forward

        rc = forward(sys.argv)
        if rc is not None:
            sys.exit(rc)
    app()


if __name__ == "__main__":
    main()
