"""The family contract: a family defined only in tests/ runs end to end through the CLI, and shared
code never names a family, never branches on a task type, imports mlflow only in tracking/, and
keeps models/ free of file I/O."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project

SRC = ROOT / "src" / "medops"
BIN = Path(sys.executable).parent
TASK_TYPES = {"segmentation", "classification"}
VERBS = ("generate", "validate", "preprocess", "train", "evaluate", "report", "promote", "predict")


def _family_dirs() -> set[str]:
    return {p.name for p in (SRC / "families").iterdir() if (p / "__init__.py").exists()}


def _shared_modules() -> list[Path]:
    """Every module outside a family's own package and its models/<name>/ subpackage."""
    fams = _family_dirs()
    out = []
    for p in SRC.rglob("*.py"):
        rel = p.relative_to(SRC).parts
        if rel[0] == "families" and len(rel) > 2 and rel[1] in fams:
            continue
        if rel[0] == "models" and len(rel) > 2 and rel[1] in fams:
            continue
        out.append(p)
    return out


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docs.add(id(node.body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_shared_code_never_names_a_family_or_a_task_type():
    names = _family_dirs() | {"tiny_blobs"}
    hits = []
    for p in _shared_modules():
        for line, s in _strings(ast.parse(p.read_text())):
            words = set(s.replace("/", " ").replace("@", " ").replace(":", " ").replace(".", " ").split())
            if s in names | TASK_TYPES or words & names:
                hits.append(f"{p.relative_to(ROOT)}:{line}: {s!r}")
    assert not hits, "family or task-type names in shared code:\n" + "\n".join(hits)


def test_no_branch_on_family_or_task_type_and_no_attribute_probing_in_verbs():
    bad = []
    for p in _shared_modules():
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "task_type":
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno}: .task_type")
    for verb in VERBS:
        tree = ast.parse((SRC / "runs" / f"{verb}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr"):
                bad.append(f"runs/{verb}.py:{node.lineno}: {node.func.id}()")
    assert not bad, "\n".join(bad)


def test_mlflow_is_imported_only_inside_tracking():
    bad = []
    for p in SRC.rglob("*.py"):
        if p.relative_to(SRC).parts[0] == "tracking":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m.split(".")[0] == "mlflow" for m in mods):
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad


def test_models_do_no_file_io():
    bad = []
    for p in (SRC / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in {"open", "load", "save", "read_text", "read_bytes", "write_text", "exists", "Path"}:
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno}: {name}()")
    assert not bad, bad


def test_verb_modules_are_short_and_independent():
    longest = {}
    for verb in VERBS:
        path = SRC / "runs" / f"{verb}.py"
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medops.runs"):
                pytest.fail(f"runs/{verb}.py imports {node.module}: verb modules never import each other")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                longest[f"{verb}.{node.name}"] = node.end_lineno - node.lineno + 1
    worst = max(longest, key=longest.get)
    assert longest[worst] <= 60, f"{worst} has {longest[worst]} lines"


def test_unknown_family_lists_the_known_ones():
    from medops.errors import ConfigError
    from medops.families import get_family, list_families

    with pytest.raises(ConfigError) as exc:
        get_family("no_such_family")
    assert all(n in str(exc.value) for n in list_families())


def _run(cmd: str, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env)
    if check and r.returncode:
        raise AssertionError(f"{cmd} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.mark.slow
@pytest.mark.integration
def test_a_family_defined_in_tests_runs_end_to_end(tmp_path, warm):
    """generate -> validate -> preprocess -> train -> ablation cells -> evaluate -> report -> promote -> predict
    of `tiny_blobs` (tests/tiny_family.py) through the `medops` CLI, with nothing outside tests/ knowing it."""
    for folder in ("src", "dags", "components", "infra", "benchmarks"):
        for p in (ROOT / folder).rglob("*"):
            if p.is_file() and p.suffix in {".py", ".yaml", ".yml", ".md", ".txt", ".sh"}:
                assert "tiny_blobs" not in p.read_text(errors="ignore"), p
    dst = copy_project(tmp_path / "proj")
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params = {"profile": "smoke", "plugins": ["tiny_family"], "split": params["split"],
              "validate": {"min_cases_per_class": 2}, "tracking": params["tracking"],
              "tiny_blobs": {"data": {"n_cases": 40}, "model": {"width": 4},
                             "train": {"lr": 0.01, "batch_size": 8, "epochs": 3, "loss": "ce", "monitor": "val_auc",
                                       "scheduler": "none", "seed": 1}},
              "ablation": {"tiny_blobs": {"seeds": [1, 2], "epochs": 3, "factors": {"width": [4, 8]},
                                          "baseline": {"width": 4}, "cells": {"narrow": {}, "wide": {"width": 8}}}},
              "promote": {"tiny_blobs": {"metric": "accuracy", "floor": 0.0, "alpha": 0.05,
                                         "require_converged": False}},  # 3-epoch cells never plateau
              "orchestration": {"families": ["tiny_blobs"]}}
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT / "tests")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(warm)        # as `medops run` does: the plugin is found through the client's PYTHONPATH
    out = _run("medops families", dst, env).stdout
    assert "tiny_blobs: datasets ['tiny-blobs']" in out
    assert "generated 40 cases" in _run("medops generate tiny-blobs", dst, env).stdout
    assert "validation passed: 40 cases" in _run("medops validate --dataset tiny-blobs", dst, env).stdout
    assert "preprocessed 40 tiny cases" in _run("medops preprocess --dataset tiny-blobs", dst, env).stdout
    assert "trained tiny_blobs" in _run("medops train tiny_blobs", dst, env).stdout
    for cell in ("narrow", "wide"):
        for seed in (1, 2):
            _run(f"medops train tiny_blobs --cell {cell} --seed {seed}", dst, env)
    ev = _run("medops evaluate tiny_blobs", dst, env).stdout
    assert "tiny_blobs accuracy" in ev
    m = json.loads((dst / "reports/tiny_blobs/metrics.json").read_text())
    assert m["n_test_cases"] == 8 and 0 <= m["model"]["auc"] <= 1
    rep = _run("medops report tiny_blobs", dst, env).stdout
    assert "Width of the tiny CNN" in rep and "4/4 cells finished" in rep
    promo = _run("medops promote tiny_blobs", dst, env).stdout
    assert "-> version 1: PROMOTED" in promo
    img = dst / "data/raw/tiny-blobs/images"
    pred = _run(f"medops predict --input {img} --out {tmp_path / 'pred'}", dst, env).stdout  # default: champion
    assert pred.count("p blob") == 40
    assert len(list((tmp_path / "pred").glob("*.json"))) == 40

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    c = MlflowClient()
    champ = c.get_model_version_by_alias("tiny_blobs", "champion")
    run = c.get_run(champ.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["family"] == "tiny_blobs"
    assert run.info.run_name.startswith("tiny_blobs/")
    main = json.loads((dst / "models/tiny_blobs/run.json").read_text())
    assert c.get_run(main["run_id"]).data.metrics["test_auc"] == pytest.approx(m["model"]["auc"])


def test_the_family_contract_docstring_example_runs():
    import doctest

    import medops.families.base as base

    assert doctest.testmod(base, optionflags=doctest.ELLIPSIS).failed == 0
