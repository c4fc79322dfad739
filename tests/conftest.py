"""Shared fixtures: one small generated dataset per session (smoke profile)."""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import yaml

import pytest

from medops.config import load_config

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# A syntactically valid kube config for rendering pods offline (a dummy cluster that is never contacted).
# Set before any test module imports the kubernetes client, which reads KUBECONFIG once at import time.
_KUBE = Path(tempfile.mkdtemp(prefix="medops-kube-")) / "config"
atexit.register(shutil.rmtree, _KUBE.parent, True)
_KUBE.write_text(yaml.safe_dump({
    "apiVersion": "v1", "kind": "Config", "current-context": "dummy",
    "clusters": [{"name": "dummy", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "contexts": [{"name": "dummy", "context": {"cluster": "dummy", "user": "dummy"}}],
    "users": [{"name": "dummy", "user": {"token": "not-a-real-token"}}]}))
os.environ["KUBECONFIG"] = str(_KUBE)


def edit_params(path: Path, edit) -> dict:
    """Parse params.yaml, let ``edit(params)`` change the dict, write it back (YAML, never string surgery)."""
    params = yaml.safe_load(Path(path).read_text())
    edit(params)
    Path(path).write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def copy_project(dst: Path, cells: dict | None = None) -> Path:
    """Copy the project's tracked and unignored files to ``dst``; optionally replace fusion_seg's
    ablation cells in params.yaml with ``cells`` (cell -> factor levels)."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    if cells is not None:
        edit_params(dst / "params.yaml", lambda p: p["ablation"]["fusion_seg"].update(cells=cells))
    return dst


@pytest.fixture(scope="session")
def warm():
    """One warm server for the session (as `medops run` starts one): pass the returned env to a subprocess and
    each `medops` command it runs is forked from the server instead of importing torch, MONAI and MLflow anew."""
    from medops.warm import WarmServer

    with WarmServer() as env:
        assert env["MEDOPS_WARM"] != "0"
        yield env


@pytest.fixture(scope="session")
def smoke_cfg():
    return load_config(ROOT / "params.yaml", profile="smoke")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, smoke_cfg):
    """A validated smoke dataset (12 cases) under <tmp>/raw."""
    from medops.data.breast_trimodal import generate

    root = tmp_path_factory.mktemp("ds") / "raw"
    gcfg = dataclasses.replace(smoke_cfg.generate, n_cases=12, workers=1)
    generate(gcfg, smoke_cfg.split, root, progress=False)
    return root


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, dataset, smoke_cfg):
    from medops.preprocess.breast_trimodal import preprocess_dataset

    out = tmp_path_factory.mktemp("pre") / "pre"
    cfg = dataclasses.replace(smoke_cfg.preprocess, workers=1)
    preprocess_dataset(dataset, out, cfg, progress=False)
    return out


@pytest.fixture
def dataset_copy(tmp_path, dataset):
    dst = tmp_path / "raw"
    shutil.copytree(dataset, dst)
    return dst
