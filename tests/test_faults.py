"""Fault and abuse suite: each hostile or careless input gets a clear one-line error (file, rule, fix), nothing
runs that a store handed us, and nothing already produced changes — data, models, reports and the MLflow
store are compared before and after (SHA-256 of every file, run statuses, registry aliases)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, copy_project, edit_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent
MARKER = Path("/tmp/medops-pwned-by-a-pickle")


class Planted:
    """What an attacker writes into a store: unpickling it would run a shell command."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _env(**extra):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


_WARM: dict = {}     # the session's warm server (set below): `medops` commands fork from it, as under `medops run`


@pytest.fixture(scope="module", autouse=True)
def _warm_commands(warm):
    _WARM.update(warm)
    yield
    _WARM.clear()


def _sh(cmd, cwd, check=True, **env):
    """Run ``cmd`` in a shell; its `medops` commands run warm (same code, exit status and output as a process
    of its own: tests/test_warm.py), which saves the ~10 s of imports per command. Popen with ``_env()`` for
    a command that must be a process of its own (its pid is checked)."""
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=_env(**{**_WARM, **env}))
    if check and r.returncode:
        raise AssertionError(f"{cmd} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _refused(r, *words):
    """A clear refusal: non-zero exit, the words in the message, no traceback."""
    text = r.stdout + r.stderr
    assert r.returncode != 0, text
    assert "Traceback" not in text, text[-3000:]
    for w in words:
        assert w in text, (w, text[-2000:])
    return text


def _snapshot(dst: Path) -> dict:
    files = {}
    for top in ("data", "models", "reports"):
        for p in sorted((dst / top).rglob("*")):
            if p.is_file():
                files[p.relative_to(dst).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{dst / 'mlflow.db'}")
    runs = {r.info.run_id: r.info.status for e in c.search_experiments() for r in c.search_runs([e.experiment_id])}
    aliases = {m.name: dict(m.aliases) for m in c.search_registered_models()}
    versions = {m.name: len(c.search_model_versions(f"name='{m.name}'")) for m in c.search_registered_models()}
    return {"files": files, "runs": runs, "aliases": aliases, "versions": versions}


@pytest.fixture(scope="module")
def proj(tmp_path_factory, warm):
    dst = copy_project(tmp_path_factory.mktemp("faults") / "medops", cells={"tri_attention": {}})

    def small(p):
        p["profile"] = "smoke"
        p["ablation"]["fusion_seg"]["seeds"] = [1]
    edit_params(dst / "params.yaml", small)
    _sh("git init -q && git add -A && git -c user.name=t -c user.email=t@x commit -qm init", dst)
    _sh("dvc repro promote evaluate", dst, **warm)          # the stages run warm, as under `medops run`
    MARKER.unlink(missing_ok=True)
    return dst


@pytest.fixture
def unchanged(proj):
    """Asserts after the test that nothing already produced changed."""
    before = _snapshot(proj)
    yield proj
    after = _snapshot(proj)
    assert after["runs"] == before["runs"] and after["aliases"] == before["aliases"]
    assert after["versions"] == before["versions"]
    changed = {k for k in set(before["files"]) | set(after["files"]) if before["files"].get(k) != after["files"].get(k)}
    assert not changed, sorted(changed)[:20]
    assert not MARKER.exists(), "a planted pickle ran"


def _champion_model_dir(dst: Path) -> Path:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{dst / 'mlflow.db'}")
    v = c.get_model_version_by_alias("fusion_seg", "champion")
    return Path(c.get_run(v.run_id).info.artifact_uri.replace("file://", "")) / "model"


def _case_folder(dst: Path, tmp: Path, name="case_a") -> Path:
    import shutil

    case = tmp / name
    case.mkdir()
    for m in ("us", "mg", "mri"):
        shutil.copy(dst / "data/raw/breast-trimodal" / m / "case_00001.png", case / f"{m}.png")
    return case


# ------------------------------------------------------------------ 1. models load without executing code
def test_a_planted_pickle_in_the_registered_model_does_not_run(unchanged, tmp_path):
    model_dir = _champion_model_dir(unchanged)
    planted = model_dir / "data" / "model.pth"
    planted.write_bytes(pickle.dumps(Planted()))
    try:
        r = _sh(f"medops predict --model models:/fusion_seg@champion --input {_case_folder(unchanged, tmp_path)} "
                f"--out {tmp_path / 'out'}", unchanged, check=False)
        _refused(r, "model_integrity", "model.pth")
    finally:
        planted.unlink()
    assert not list((tmp_path / "out").glob("*.json"))


def test_tampered_weights_are_refused_naming_the_file(unchanged, tmp_path):
    weights = _champion_model_dir(unchanged) / "data" / "medops_model" / "weights.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + b"\0" * 8)
    try:
        r = _sh(f"medops predict --model models:/fusion_seg@champion --input {_case_folder(unchanged, tmp_path)} "
                f"--out {tmp_path / 'out'}", unchanged, check=False)
        _refused(r, "weights.safetensors", "SHA-256 digest differs")
    finally:
        weights.write_bytes(original)


@pytest.mark.parametrize("verb, name", [("train fusion_seg --resume", "last.pt"), ("evaluate fusion_seg", "best.pt")])
def test_a_tampered_checkpoint_runs_nothing_and_changes_no_run(proj, verb, name):
    ck = proj / "models/fusion_seg" / name
    original = ck.read_bytes()
    before = _snapshot(proj)
    ck.write_bytes(pickle.dumps(Planted()))
    try:
        r = _sh(f"medops {verb}", proj, check=False)
        _refused(r, name, "checkpoint_readable")
    finally:
        ck.write_bytes(original)
    after = _snapshot(proj)
    assert after["runs"] == before["runs"] and after["files"] == before["files"]
    assert not MARKER.exists()


# ------------------------------------------------------------------ 2. identifiers that become paths
@pytest.mark.parametrize("hostile", ["../escape", "/abs/x", "a/b", "..", "x\\y"])
def test_hostile_case_ids_are_refused_by_the_gate_and_by_predict(unchanged, tmp_path, hostile):
    import pandas as pd

    src = unchanged / "data/raw/breast-trimodal"
    man = pd.read_parquet(src / "manifest.parquet")
    first = man.case_id.iloc[0]
    man.loc[man.case_id == first, "case_id"] = hostile
    bad = tmp_path / "hostile_manifest.parquet"
    man.to_parquet(bad)
    out = tmp_path / "pred"
    r = _sh(f"medops predict --model models:/fusion_seg@champion --input {bad} --out {out}", unchanged, check=False)
    text = _refused(r, "safe_identifier")
    assert "nothing predicted" in text
    assert not (tmp_path / "escape_mask.png").exists() and not Path("/abs/x.json").exists()
    assert not list(out.glob("*_mask.png"))


def test_hostile_dataset_and_cell_names_are_refused(unchanged):
    _refused(_sh("medops validate --dataset ../../etc", unchanged, check=False), "safe_identifier")
    _refused(_sh("medops train fusion_seg --cell ../x --seed 1", unchanged, check=False), "cell")


# ------------------------------------------------------------------ 3 + 5. one writer; honest run state
def _wait_for(path: Path, proc, seconds=120):
    t0 = time.time()
    while time.time() - t0 < seconds and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.2)
    return False


def test_two_trainings_one_trains_one_refuses_then_a_kill_leaves_an_unfinished_run(proj):
    env = _env()
    mdir = proj / "models/fusion_seg"
    edit_params(proj / "params.yaml", lambda p: p["fusion_seg"]["train"]["epochs"].update(smoke=30))
    try:
        first = subprocess.Popen(["medops", "train", "fusion_seg", "--force"], cwd=proj, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        (mdir / "last.pt").unlink(missing_ok=True)
        assert _wait_for(mdir / "last.pt", first), first.stderr.read() if first.poll() is not None else ""
        t0 = time.time()
        second = _sh("medops train fusion_seg --force", proj, check=False)
        _refused(second, "one_writer", f"pid {first.pid}")
        assert time.time() - t0 < 30                       # at once, not after waiting
        first.send_signal(signal.SIGKILL)                   # killed mid-training
        first.wait()
        run = json.loads((mdir / "run.json").read_text())["run_id"]
        r = _sh("medops evaluate fusion_seg", proj, check=False)
        _refused(r, "did not complete")
        from mlflow.tracking import MlflowClient

        c = MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
        assert c.get_run(run).info.status == "RUNNING"      # evaluate did not relabel it FINISHED
    finally:
        edit_params(proj / "params.yaml", lambda p: p["fusion_seg"]["train"]["epochs"].update(smoke=3))
    r = _sh("medops train fusion_seg", proj)                # a plain train trains (does not say "already trained")
    assert "already trained" not in r.stdout and "trained fusion_seg" in r.stdout
    assert c.get_run(run).info.status == "KILLED"           # the interrupted run is marked, not left RUNNING
    _sh("medops evaluate fusion_seg", proj)


# ------------------------------------------------------------------ 4. validation binds the content
def test_a_file_swapped_after_validation_is_refused_naming_it(unchanged):
    img = unchanged / "data/raw/breast-trimodal/mask/case_00003.png"
    original = img.read_bytes()
    from medops.data.io import write_png

    write_png(img, np.zeros((256, 256), np.uint8))          # an empty mask, same manifest
    try:
        for verb in ("preprocess --dataset breast-trimodal", "train fusion_seg --force", "evaluate fusion_seg"):
            _refused(_sh(f"medops {verb}", unchanged, check=False), "validated_content", "case_00003.png")
    finally:
        img.write_bytes(original)


def test_stale_preprocessed_data_is_refused_after_the_raw_data_changed(proj):
    img = proj / "data/raw/breast-trimodal/us/case_00002.png"
    original = img.read_bytes()
    from medops.data.io import read_image, write_png

    write_png(img, np.clip(read_image(img).astype(int) + 3, 0, 255).astype(np.uint8))  # still valid data
    try:
        _sh("medops validate --dataset breast-trimodal", proj)
        _refused(_sh("medops evaluate fusion_seg", proj, check=False), "preprocessed_current", "stale")
        _refused(_sh("medops train fusion_seg --force", proj, check=False), "preprocessed_current")
    finally:
        img.write_bytes(original)
        _sh("medops validate --dataset breast-trimodal", proj)


# ------------------------------------------------------------------ 6. config checked before anything is touched
@pytest.mark.parametrize("where, value, words", [
    (("fusion_seg", "train", "batch_size"), -8, ["batch_size", "[1, inf)"]),
    (("fusion_seg", "train", "epochs"), 0, ["epochs"]),
    (("fusion_seg", "train", "lr"), "fast", ["lr", "not a float"]),
    (("preprocess", "image_size"), 0, ["image_size"]),
    (("generate", "n_cases"), -5, ["n_cases"]),
    (("split", "fractions"), {"train": 0.9, "val": 0.9, "test": 0.9}, ["fractions", "summing to 1"]),
    (("pre_process",), {"image_size": 64}, ["pre_process", "unknown top-level key"]),
])
def test_a_bad_parameter_is_one_line_and_deletes_nothing(unchanged, where, value, words):
    params = unchanged / "params.yaml"
    original = params.read_text()

    def put(p):
        node = p
        for k in where[:-1]:
            node = node[k]
        if isinstance(node.get(where[-1]), dict) and set(node[where[-1]]) == {"smoke", "quick", "paper"}:
            node[where[-1]]["smoke"] = value
        else:
            node[where[-1]] = value
    edit_params(params, put)
    try:
        for verb in ("train fusion_seg --force", "preprocess --dataset breast-trimodal", "show fusion_seg"):
            text = _refused(_sh(f"medops {verb}", unchanged, check=False), *words)
            assert len(text.strip().splitlines()) == 1
    finally:
        params.write_text(original)


def test_bad_cli_options_and_a_missing_params_file(unchanged, tmp_path):
    _refused(_sh("medops predict --threshold 2 --input x", unchanged, check=False), "threshold")
    _refused(_sh("medops train fusion_seg --nproc 0", unchanged, check=False), "nproc")
    for verb in ("preprocess --dataset breast-trimodal", "show fusion_seg", "profile smoke", "train fusion_seg"):
        text = _refused(_sh(f"medops --params {tmp_path / 'nope.yaml'} {verb}", unchanged, check=False),
                        "parameters file not found")
        assert len(text.strip().splitlines()) == 1


# ------------------------------------------------------------------ 7. images are sized before they are decoded
def _png_header_only(path: Path, w: int, h: int) -> None:
    """A small PNG that declares w x h pixels (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_an_image_declaring_a_huge_size_is_refused_undecoded(unchanged, tmp_path):
    case = _case_folder(unchanged, tmp_path)
    _png_header_only(case / "mg.png", 30000, 30000)
    t0 = time.time()
    r = _sh(f"medops predict --model models:/fusion_seg@champion --input {case} --out {tmp_path / 'o'}", unchanged,
            check=False)
    _refused(r, "mg.png", "max_image_pixels")
    assert time.time() - t0 < 60


# ------------------------------------------------------------------ 8. outputs are never silently replaced
def test_predict_refuses_a_non_empty_folder_and_never_deletes_foreign_files(unchanged, tmp_path):
    case = _case_folder(unchanged, tmp_path)
    out = tmp_path / "pred"
    (out / "validation" / "data_docs").mkdir(parents=True)
    (out / "validation" / "data_docs" / "mine.txt").write_text("keep me")
    r = _sh(f"medops predict --model models:/fusion_seg@champion --input {case} --out {out}", unchanged, check=False)
    _refused(r, "no_overwrite", "--overwrite")
    _sh(f"medops predict --model models:/fusion_seg@champion --input {case} --out {out} --overwrite", unchanged)
    assert (out / "validation/data_docs/mine.txt").read_text() == "keep me"
    assert (out / "case_a.json").exists()


# ------------------------------------------------------------------ 9. errors keep their context; caches heal
def _raise_data_error(path):
    from medops.errors import DataError

    raise DataError(path, "readable: broken", "re-export it")


def test_a_worker_error_reaches_the_parent_with_file_rule_and_fix():
    from medops.errors import DataError
    from medops.preprocess.shards import run_jobs

    with pytest.raises(DataError) as exc:
        run_jobs(_raise_data_error, ["a.png", "b.png"], workers=2, progress=False)
    assert exc.value.rule.startswith("readable") and exc.value.fix == "re-export it" and exc.value.where.endswith(".png")


def test_a_truncated_shard_is_detected_and_recomputed(proj):
    unchanged = proj  # preprocess.json counts the recomputed shard; every shard ends as it was
    pre = unchanged / "data/preprocessed/breast-trimodal"
    shard = sorted((pre / "shards").glob("*.npz"))[0]
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 2])
    r = _sh("medops preprocess --dataset breast-trimodal", unchanged)
    assert "1 computed" in r.stdout
    assert shard.read_bytes() == original                  # the same content-addressed shard, healed
    _sh("medops train fusion_seg", unchanged)               # and it loads


def test_a_password_in_the_tracking_uri_is_never_printed_or_written(unchanged):
    r = _sh("medops train fusion_seg --force", unchanged, check=False,
            MLFLOW_TRACKING_URI="http://alice:s3cr3t-pw@127.0.0.1:9/")
    text = _refused(r, "alice:***@127.0.0.1")
    assert "s3cr3t-pw" not in text
    assert "s3cr3t-pw" not in (unchanged / "models/fusion_seg/run.json").read_text()
