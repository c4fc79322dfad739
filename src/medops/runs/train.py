"""`medops train <family>`: the main model, one ablation cell (``--cell --seed``) or a pretraining
(``--pretrain``), trained by the shared engine with the family's hooks and tracked in MLflow.

A cell also evaluates itself on the test split (the family's ``evaluate_cell``). A cell that fails
(e.g. non-finite loss) is marked FAILED in MLflow and in its ``status.json`` and returns normally,
so the other cells go on. Re-running a finished run with the same inputs does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from medops import layout
from medops.families import get_family
from medops.locks import exclusive


def _fingerprint(p, index: pd.DataFrame) -> str:
    """What a training run depends on: model and training config, its kind (main, cell, pretraining),
    the exact preprocessed cases, and the family's extra inputs (e.g. the source checkpoint)."""
    payload = json.dumps({"model": asdict(p.model_cfg), "train": asdict(p.train_cfg),
                          "cell": None if p.kind == "main" else p.kind, "extra": p.extra_inputs,
                          "cases": sorted(zip(index.case_id, index.split, index.shard))}, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _completion_record(p) -> Path:
    """Written atomically at the very end of a run (and deleted when one starts): a run is done only if
    this file says so for the run in run.json — files that survive a kill (run.json, last.pt) never do."""
    return p.out / ("train_metrics.json" if p.kind == "main" else "status.json")


def _write_atomic(path: Path, record: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def _already_done(p, fingerprint: str) -> dict | None:
    """The finished run with the same inputs, if there is one (so re-running a task changes nothing)."""
    run_file, marker = p.out / "run.json", _completion_record(p)
    if not (run_file.exists() and marker.exists()):
        return None
    done, run = json.loads(marker.read_text()), json.loads(run_file.read_text())
    if done.get("fingerprint") != fingerprint or done.get("run_id", run["run_id"]) != run["run_id"] or (
            done.get("status", "finished") == "finished" and not (p.out / "best.pt").exists()):
        return None
    return {**run, "skipped": True, "status": done.get("status", "finished"), "reason": done.get("reason", "")}


def _supersede(p) -> None:
    """A new training replaces an unfinished one: its MLflow run, left RUNNING by a kill, is marked KILLED."""
    from medops import tracking

    run_file = p.out / "run.json"
    if run_file.exists():
        old = json.loads(run_file.read_text()).get("run_id")
        if old and tracking.run_status(old) == "RUNNING":
            tracking.mark_run(old, "KILLED", "interrupted; superseded by a new training of the same folder")


def _tags(cfg, fam, p, validation: dict, index, train_ds, task) -> dict:
    from medops import tracking

    fcfg = cfg.family(fam.name)
    cell = None if p.kind == "main" or p.kind.startswith("pretrain:") else p.kind
    return {"family": fam.name, "profile": cfg.profile, "git_commit": tracking.git_commit(),
            "dataset": p.dataset, "dataset_version": tracking.dataset_version(layout.data_dir(p.dataset)),
            "validation": validation["status"], "validation_manifest_sha256": validation["manifest_sha256"],
            "cell": cell or ("pretrain" if p.kind.startswith("pretrain:") else "main"), "seed": p.train_cfg.seed,
            **{f"factor.{k}": v for k, v in (fcfg.ablation.levels(cell) if cell else {}).items()},
            **fam.run_tags(index, train_ds, task)}


def _run_name(family: str, p) -> str:
    if p.kind == "main":
        return f"{family}/main"
    if p.kind.startswith("pretrain:"):
        return f"{family}/pretrain/{p.kind.split(':', 1)[1]}"
    return f"{family}/{p.kind}/seed{p.train_cfg.seed}"


def _summarise(task, fam, history: list[dict], best: dict, train_cfg, fingerprint: str, run_id: str) -> dict:
    from medops.engine.trainer import stopped_on_plateau

    best_rec = next((h for h in history if h["epoch"] == best["epoch"]), history[-1])
    return {"run_id": run_id, "best_epoch": best["epoch"], f"best_{task.monitor}": best[task.monitor],
            "selection_score": best_rec.get(fam.selection, float("nan")), "selection_metric": fam.selection,
            "epochs": len(history), "early_stopped": len(history) < train_cfg.epochs,
            # converged: the stopping rule holds at the end (also when the plateau came in the budget's last epoch)
            "converged": stopped_on_plateau(history, task, train_cfg),
            "final_train_loss": history[-1]["train_loss"], "final_val_loss": history[-1]["val_loss"],
            "fingerprint": fingerprint}


def _finish(cfg, fam, p, net, val_ds, pre, index, info: dict, train_metrics: dict) -> None:
    """After training: the family's extra artifacts, then what this kind of run leaves behind
    (a registered-ready model for the main run, the test evaluation for a cell)."""
    from medops import tracking

    out = p.out
    if p.kind == "main":
        _write_atomic(out / "train_metrics.json.partial", train_metrics)  # completed below, once the model is logged
    else:
        (out / "train_metrics.json").write_text(json.dumps(train_metrics, indent=2))
    for path, folder in fam.after_training(net, val_ds, out):
        tracking.log_artifact(path, folder)
    tracking.log_artifact(out / "history.csv", "training")
    if p.kind.startswith("pretrain:"):
        _write_atomic(out / "status.json", {"status": "finished", **train_metrics})
    elif p.kind == "main":
        info["model_uri"] = tracking.log_model(net, fam.activation(), val_ds.images[:1].float().numpy())
        (out / "train_metrics.json.partial").unlink()
        _write_atomic(out / "train_metrics.json", train_metrics)
    else:
        fcfg = cfg.family(fam.name)
        test = fam.evaluate_cell(net, pre, index, out, fcfg=fcfg, model_cfg=p.model_cfg)
        tracking.log_metrics({f"test_{k}": v for k, v in test["full"].items()})
        tracking.log_artifact(out / "per_case.csv", "evaluation")
        if (out / "figures").exists():
            tracking.log_artifact(out / "figures", "figures")
        _write_atomic(out / "status.json", {"status": "finished", **train_metrics, "dataset": p.dataset,
                                            "test": test["full"]})


def _fail_cell(p, run_id: str, exc: Exception, fingerprint: str) -> dict:
    _write_atomic(p.out / "status.json", {"status": "failed", "reason": str(exc), "fingerprint": fingerprint,
                                          "run_id": run_id})
    for stale in ("best.pt", "last.pt"):
        (p.out / stale).unlink(missing_ok=True)
    return {"run_id": run_id, "status": "failed", "reason": str(exc)}


def _process_wall_s() -> float:
    """Seconds since this process started (imports included: a large share of a short cell's time)."""
    import psutil

    return round(time.time() - psutil.Process().create_time(), 1)


def _at_once() -> int:
    """How many ablation stages `medops run` is running side by side (``MEDOPS_PARALLEL_STAGES``; 1 if unset)."""
    try:
        return max(1, int(os.environ.get("MEDOPS_PARALLEL_STAGES", "1")))
    except ValueError:
        return 1


def _position(family: str, fcfg, p, cell: str | None, seed: int | None) -> str:
    """The stage's line for a person following the run: which family and step, and for an ablation cell its
    place among the ablation's runs with the time left estimated from the runs finished so far."""
    if p.kind == "main":
        return f"[{family}] train the main model on {p.dataset}"
    if cell is None:
        return f"[{family}] {p.kind.replace(':', ' ')}"
    abl = fcfg.ablation
    runs = [(c, int(s)) for c in abl.cells for s in abl.seeds]
    done, walls, ends = 0, [], []
    for c, s in runs:
        st = layout.cell_dir(family, c, s) / "status.json"
        if st.exists() and (c, s) != (cell, seed):
            done += 1
            ends.append(st.stat().st_mtime)
            w = json.loads(st.read_text()).get("wall_s")
            if w:
                walls.append(float(w))
    left = len(runs) - done
    # the median time between finished runs counts what a run's own clock cannot (DVC's work between
    # stages) and ignores a pause (an ablation resumed days later); with k stages side by side (`medops run`)
    # runs finish in bunches, so it is the time for k more runs to finish, / k. Until there are two such
    # spans, the runs' own clocks, shared among the k.
    at_once, ends = _at_once(), sorted(ends)
    gaps = sorted((b - a) / at_once for a, b in zip(ends, ends[at_once:]))
    per_run = gaps[(len(gaps) - 1) // 2] if len(gaps) >= 2 else (sum(walls) / len(walls) / at_once if walls else None)
    side = f", {at_once} at a time" if at_once > 1 else ""
    eta = f"; about {left * per_run / 60:.0f} min left ({per_run:.0f} s per run so far{side})" if per_run else ""
    return f"[{family}] ablation {done + 1}/{len(runs)}: {cell}, seed {seed}{eta}"


def train(cfg, family: str, *, resume: bool = False, progress: bool = True, cell: str | None = None,
          seed: int | None = None, force: bool = False, pretrain: str | None = None) -> dict:
    """Train ``family``'s main model, ablation ``cell`` with ``seed``, or pretraining ``pretrain``."""
    from medops.engine import load_checkpoint, pick_device
    from medops.engine.distributed import init_distributed
    from medops.engine.policy import check_resumable, resolve_policy
    from medops.preprocess import load_index
    from medops.preprocess.shards import require_current
    from medops.validation import require_passed

    fam, fcfg = get_family(family, cfg), cfg.family(family)
    if cell is not None:
        fcfg.ablation.levels(cell)  # an unknown cell fails here, naming the cells
    dinfo = init_distributed()  # one process unless launched by torchrun (medops train --nproc N)
    p = fam.prepare(fcfg, cell=cell, seed=seed, pretrain=pretrain, layout=layout)
    validation = require_passed(layout.data_dir(p.dataset), layout.validation_dir(p.dataset))
    pre = layout.preprocessed_dir(p.dataset)
    require_current(pre, validation)
    index = fam.run_index(load_index(pre), p)
    fingerprint = _fingerprint(p, index)
    if dinfo.main:
        print(_position(fam.name, fcfg, p, cell, seed), file=sys.stderr, flush=True)
    if not dinfo.main:
        return _train_rank(fam, fcfg, p, pre, index, resume)
    with exclusive(p.out, f"the training folder of {family} ({p.kind})"):
        if resume and (p.out / "last.pt").exists():  # a damaged or foreign checkpoint, or one of another precision
            check_resumable(load_checkpoint(p.out / "last.pt"), resolve_policy(p.train_cfg, pick_device()),
                            str(p.out / "last.pt"))  # policy, fails here, before any run changes
        if not resume and not force:
            done = _already_done(p, fingerprint)
            if done is not None:
                return done
        if not resume:
            _supersede(p)
        _completion_record(p).unlink(missing_ok=True)
        return _train_main(cfg, fam, fcfg, p, pre, index, validation, fingerprint, resume, progress, dinfo.world)


def _train_rank(fam, fcfg, p, pre, index, resume: bool) -> dict:
    """Ranks > 0 of a DDP run train their shard; rank 0 owns tracking, checkpoints and evaluation."""
    from medops.engine import Trainer, seed_everything
    from medops.engine.distributed import env_info, shutdown

    train_ds, val_ds = fam.training_datasets(fcfg, pre, index, p.model_cfg)
    seed_everything(p.train_cfg.seed)
    task = fam.task(fam.build_model(fcfg, p.model_cfg, index), p.train_cfg, train_ds)
    try:
        Trainer(task, p.train_cfg, p.out, logger=None, progress=False).fit(train_ds, val_ds, resume=resume)
    finally:
        shutdown()
    return {"rank": env_info().rank}


def _train_main(cfg, fam, fcfg, p, pre, index, validation, fingerprint, resume, progress, world) -> dict:
    from medops.engine import seed_everything

    train_ds, val_ds = fam.training_datasets(fcfg, pre, index, p.model_cfg)
    seed_everything(p.train_cfg.seed)  # the initial weights are part of the run's seed
    net = fam.build_model(fcfg, p.model_cfg, index)
    task = fam.task(net, p.train_cfg, train_ds)
    tags = _tags(cfg, fam, p, validation, index, train_ds, task)
    return _tracked_fit(cfg, fam, p, dict(net=net, task=task, train_ds=train_ds, val_ds=val_ds, pre=pre,
                                          index=index), tags, fingerprint, resume, progress, world)


def _tracked_fit(cfg, fam, p, w: dict, tags: dict, fingerprint: str, resume: bool, progress: bool, world: int):
    from medops import tracking
    from medops.engine import Trainer, load_checkpoint
    from medops.engine.distributed import shutdown
    from medops.engine.trainer import Preempted

    fcfg, out, is_cell = cfg.family(fam.name), p.out, p.kind != "main" and not p.kind.startswith("pretrain:")
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    prev = json.loads(run_file.read_text()) if (resume and run_file.exists()) else {}
    parent = (tracking.ablation_parent_run(fam.name, fcfg.ablation, tags, prefix=cfg.tracking.experiment_prefix)
              if is_cell and not prev else None)
    run = tracking.start_or_resume_run(fam.name, _run_name(fam.name, p), tags=tags,
                                       prefix=cfg.tracking.experiment_prefix, run_id=prev.get("run_id"),
                                       parent_run_id=parent)
    (out / "status.json").unlink(missing_ok=True)
    try:
        info = tracking.write_run_file(run_file, run)
        if not prev:
            tracking.log_params_and_config(cfg.raw | {
                "family": fam.name, "profile": cfg.profile, "cell": tags["cell"], "dataset_used": p.dataset,
                "resolved_model": asdict(p.model_cfg), "resolved_train": asdict(p.train_cfg), "world_size": world})
        trainer = Trainer(w["task"], p.train_cfg, out, logger=tracking.MlflowLogger(run.info.run_id), progress=progress,
                          callbacks=[lambda event, info: event == "engine" and tracking.log_new_params(info)])
        history = trainer.fit(w["train_ds"], w["val_ds"], resume=resume)
        pd.DataFrame(history).to_csv(out / "history.csv", index=False)
        best = load_checkpoint(out / "best.pt")
        w["net"].load_state_dict(best["model"])
        summary = _summarise(w["task"], fam, history, best, p.train_cfg, fingerprint, run.info.run_id)
        summary["wall_s"] = _process_wall_s()   # the whole stage so far, start-up included (the ablation's ETA)
        _finish(cfg, fam, p, w["net"], w["val_ds"], w["pre"], w["index"], info, summary)
        run_file.write_text(json.dumps(info, indent=2))
        tracking.end_run()
        return info
    except FloatingPointError as exc:
        tracking.end_run("FAILED", reason=str(exc))
        if not is_cell:
            raise
        return _fail_cell(p, run.info.run_id, exc, fingerprint)
    except Preempted as exc:  # SIGTERM: last.pt holds the finished step; the retry resumes (--resume)
        tracking.end_run("KILLED", reason=str(exc))
        raise
    except BaseException as exc:
        tracking.end_run("FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED", reason=repr(exc))
        raise
    finally:
        shutdown()
