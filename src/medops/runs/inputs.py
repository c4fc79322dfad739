"""One file standing for the code and parameters that many DVC stages share (``medops inputs``).

DVC records every dependency and every parameter value of a stage in the stage's ``dvc.lock`` entry, and after
each stage it loads and rewrites the *whole* lock with ruamel.yaml's round trip (pure Python). An ablation has
dozens of stages with the same ~40 code paths and ~150 lines of parameters, so each stage added ~300 lines and
the time DVC spends between stages grew from ~3 s to ~13 s over a 60-stage ablation (the lock reached 19,300
lines; ``benchmarks/dvc_lock_overhead.py --entries``). An *inputs stage* depends on those paths and parameters
once and writes their content digests to one small JSON file; each ablation stage depends on that file instead
(plus its data and its own cell's parameters), so its lock entry is ~30 lines. DVC still reruns exactly what it
did: editing a listed module or parameter reruns the inputs stage, its file changes, and every stage that
depends on it reruns; changing one cell's parameters reruns that cell's stages only.

The command reads the stage's ``deps``, ``params`` and single ``outs`` from the pipeline file itself, so the
list is written once, in dvc.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml

from medops.data.io import file_sha256
from medops.errors import ConfigError, MedopsError

SKIP_DIRS = {"__pycache__"}          # bytecode: not the code's content (DVC hashes it too; we need not)


def digest(path: Path) -> str:
    """A file's sha256, or a folder's: the sha256 of its files' relative paths and digests, in sorted order."""
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise MedopsError(str(path), "a dependency of the inputs stage does not exist",
                          "restore it, or remove it from the stage's deps in the pipeline file")
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(n for n in filenames if not n.endswith(".pyc")):
            f = Path(dirpath) / name
            h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _param(params: dict, key: str, where: str):
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(where, f"parameter {key!r} is not in params.yaml",
                              "add it to params.yaml or remove it from the stage's params")
        node = node[part]
    return node


def _stage(pipeline: Path, name: str) -> dict:
    try:
        stages = (yaml.safe_load(pipeline.read_text()) or {}).get("stages", {}) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(pipeline), f"cannot read the pipeline file ({exc})", "pass an existing dvc.yaml") from exc
    if name not in stages:
        raise ConfigError(f"{pipeline}:{name}", "no such stage", f"use one of {sorted(stages)}")
    st = stages[name]
    text = json.dumps(st)
    if "matrix" in st or "foreach" in st or "${" in text:
        raise ConfigError(f"{pipeline}:{name}", "an inputs stage must list its paths and params literally "
                          "(no matrix, foreach or ${...})", "write the stage without templating")
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in st.get("outs", [])]
    if len(outs) != 1 or any(not isinstance(p, str) for p in st.get("params", [])):
        raise ConfigError(f"{pipeline}:{name}", "an inputs stage has exactly one output and its params as plain keys "
                          "of params.yaml", "list one outs path (the JSON it writes) and params as `- key.sub`")
    return {**st, "out": outs[0]}


def write_inputs(spec: str) -> tuple[Path, dict]:
    """``spec`` = ``<pipeline file>:<stage>``, relative to the working folder (the stage's wdir, where DVC runs
    it). Writes the stage's single output: {"stage", "paths": {path: sha256}, "params": {key: value}}."""
    file, _, name = spec.rpartition(":")
    if not file or not name:
        raise ConfigError(spec, "expected <pipeline file>:<stage>", "e.g. medops inputs dvc.yaml:ablation_inputs")
    pipeline = Path(file)
    st = _stage(pipeline, name)
    base = (pipeline.parent / st.get("wdir", ".")).resolve()
    if base != Path.cwd().resolve():
        raise ConfigError(spec, f"the stage's wdir is {base}, not the working folder {Path.cwd()}",
                          "run the command from the stage's wdir (as `dvc repro` does)")
    params_file = base / "params.yaml"
    params = yaml.safe_load(params_file.read_text()) or {}
    record = {"stage": spec,
              "paths": {d: digest(base / d) for d in sorted(st.get("deps", []))},
              "params": {k: _param(params, k, f"{spec} params") for k in st.get("params", [])}}
    out = base / st["out"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, out)
    return out, record
