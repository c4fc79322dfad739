"""Integration: the smoke profile through `dvc repro`, as a user runs it."""

import json
import os
import shutil
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, copy_project, edit_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent
FUSION_TARGETS = "promote evaluate"  # the fusion_seg pipeline (transfer_cls has its own test module)


def _sh(cmd, cwd, check=True, extra_env: dict | None = None):
    env = {**os.environ, **(extra_env or {}), "PATH": f"{BIN}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MEDOPS_IMPORTS_LOG"] = str(Path(cwd).parent / "imports.jsonl")  # what each command imported
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def project(tmp_path_factory, warm):
    # a small ablation for the test suite: 4 cells x 3 seeds, one of which diverges (lr 1e30)
    dst = copy_project(tmp_path_factory.mktemp("proj") / "medops",
                       cells={"tri_attention": {}, "mri": {"modalities": "mri"}, "concat": {"fusion": "concat"},
                              "diverge": {"lr": 1.0e+30}})

    def lr_factor(p):
        abl = p["ablation"]["fusion_seg"]
        abl["factors"]["lr"] = [0.003, 1.0e+30]
        abl["baseline"]["lr"] = 0.003

    edit_params(dst / "params.yaml", lr_factor)
    _sh("git init -q && git add -A && git commit -qm init", dst)
    _sh("medops profile smoke", dst)
    # warm, as under `medops run`; the later `dvc repro`s below run cold, as by hand
    repro = _sh(f"dvc repro {FUSION_TARGETS}", dst, extra_env=warm)
    return dst, repro


def test_repro_produces_metrics_predictions_figures(project):
    dst, repro = project
    m = json.loads((dst / "reports/fusion_seg/metrics.json").read_text())
    assert set(m["model"]) == {"dsc", "iou", "sensitivity", "specificity"}
    assert all(0 <= v <= 1 for v in m["model"].values())
    per_case = pd.read_csv(dst / "reports/fusion_seg/per_case.csv")
    n = m["n_test_cases"]
    assert (per_case.method == "fusion_seg").sum() == n
    assert len(list((dst / "reports/fusion_seg/predictions").glob("*.png"))) == n
    for fig in ("loss_curves.png", "overlays.png"):
        assert (dst / "reports/fusion_seg/figures" / fig).stat().st_size > 5000
    assert (dst / "reports/validation/breast-trimodal/data_docs/index.html").exists()
    hist = pd.read_csv(dst / "models/fusion_seg/history.csv")
    assert {"train_loss", "val_loss", "val_dice"} <= set(hist.columns)


def test_mlflow_run_has_config_metrics_tags_model(project):
    dst, _ = project
    import mlflow
    from mlflow.tracking import MlflowClient

    run_info = json.loads((dst / "models/fusion_seg/run.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    client = MlflowClient()
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "fusion_seg/main"
    head = _sh("git rev-parse HEAD", dst).stdout.strip()
    assert run.data.tags["git_commit"].startswith(head)
    assert run.data.tags["profile"] == "smoke"
    lock = (dst / "dvc.lock").read_text()
    assert run.data.tags["dataset_version"].startswith("dvc:")
    assert run.data.tags["dataset_version"][4:] in lock
    assert "test_dsc" in run.data.metrics and "val_dice" in run.data.metrics
    hist = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(hist) == 3  # one per epoch (smoke: 3 epochs)
    assert run.data.params["fusion_seg.train.lr"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "figures", "evaluation", "training", "attention"} <= arts
    import torch

    from medops.tracking import resolve_model

    cwd = os.getcwd()
    os.chdir(dst)
    try:
        ref = resolve_model(run_info["model_uri"])
        assert set(ref.digests) >= {"MLmodel", "data/medops_model/weights.safetensors"}
        model = ref.load()  # rebuilt by name + safetensors after the digest check
    finally:
        os.chdir(cwd)
    x = torch.rand(1, 3, 64, 64)
    y = model(x).detach()
    assert y.shape == (1, 1, 64, 64) and 0 <= float(y.min()) and float(y.max()) <= 1
    pyfunc = mlflow.pyfunc.load_model(run_info["model_uri"])  # `mlflow models serve` path: no pickle either
    assert np.allclose(pyfunc.predict(x.numpy()), y.numpy(), atol=1e-6)


def test_every_stage_depends_on_the_code_it_runs(project):
    """Each stage's deps in dvc.yaml cover the medops modules its command imported during `dvc repro`
    (so editing that code invalidates the cached outputs)."""
    from dvc_deps import uncovered

    dst, _ = project
    assert uncovered(dst, dst.parent / "imports.jsonl", ROOT) == []


def test_second_repro_does_nothing_and_push_works(project):
    dst, _ = project
    r = _sh(f"dvc repro {FUSION_TARGETS}", dst)
    assert "didn't change" in r.stdout or "up to date" in r.stdout
    assert "Running stage" not in r.stdout
    st = _sh(f"dvc status {FUSION_TARGETS}", dst)
    assert "up to date" in st.stdout
    _sh("dvc push", dst)
    assert any((dst / "dvc-remote").rglob("*"))


def test_make_run_prints_table_ablation_champion_and_ui_command(project):
    dst, _ = project
    r = _sh("medops show fusion_seg", dst)
    assert "DSC" in r.stdout and "otsu_" in r.stdout
    assert "Uni- vs bi- vs tri-modal" in r.stdout and "## Claims" in r.stdout
    assert "champion = v1" in r.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in r.stdout


def _chromium(url: str, tmp_path, *args) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by `make system-deps` (make test)"
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'chrome'}",
                           "--virtual-time-budget=5000", *args, url], check=True, capture_output=True, text=True,
                          timeout=120)


def test_medops_run_reports_every_family_and_the_summary_page_loads_in_a_browser(project, tmp_path):
    """`medops run` (what `make run` calls) reproduces each family's stages, prints every family's results in
    order with the times, keeps going past a family whose stages fail and shows why; reports/index.html opens
    from the file system in headless Chromium with every image loaded, and names a missing figure."""
    import re

    from PIL import Image

    dst, _ = project
    shutil.copy(dst / "params.yaml", dst / "params_run.yaml")

    def targets(p):
        p["orchestration"]["run_targets"].update(fusion_seg=["evaluate", "promote"], transfer_cls=["no_such_stage"])

    edit_params(dst / "params_run.yaml", targets)
    r = _sh("medops --params params_run.yaml run --family fusion_seg,transfer_cls", dst, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "failed: transfer_cls" in out
    assert out.index("===== fusion_seg: ok") < out.index("===== transfer_cls: failed")
    assert "DSC" in out and "## Claims" in out and "champion = v" in out and "mlflow ui --backend-store-uri" in out
    assert "no_such_stage" in out and re.search(r"total\s+\d+\.\d min", out)
    run = json.loads((dst / "reports/run.json").read_text())
    assert run["families"]["transfer_cls"]["status"] == "failed" and run["families"]["fusion_seg"]["wall_s"] > 0
    page = dst / "reports/index.html"
    text = page.read_text()
    assert "FAILED after" in text and "Great Expectations Data Docs" in text and "model card" in text
    assert "<table>" in text and "contact sheet of breast-trimodal" in text

    dom = _chromium(page.as_uri(), tmp_path, "--dump-dom").stdout
    n_img = int(re.search(r'data-images="(\d+)"', dom).group(1))
    assert n_img >= 4 and 'data-broken-images=""' in dom, re.search(r'data-broken-images="[^"]*"', dom)
    shot = tmp_path / "summary.png"
    _chromium(page.as_uri(), tmp_path, "--window-size=1400,1000", f"--screenshot={shot}")
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.std() > 10 and (img < 200).mean() > 0.01, "the screenshot is blank"

    # a figure the ablation report links to goes missing: the page names it instead of showing a broken image
    figs = re.findall(r"\]\((figures/[^)]+\.png)\)", (dst / "reports/ablation/fusion_seg/report.md").read_text())
    gone = dst / "reports/ablation/fusion_seg" / figs[0]
    keep = gone.read_bytes()
    try:
        gone.unlink()
        _sh("medops summary", dst)
        text = page.read_text()
        assert f"missing: {gone.relative_to(dst)}" in text or f"missing: {gone}" in text
        dom = _chromium(page.as_uri(), tmp_path, "--dump-dom").stdout
        assert 'data-broken-images=""' in dom
    finally:
        gone.write_bytes(keep)
        (dst / "params_run.yaml").unlink()


def _client(dst):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    return MlflowClient()


def test_ablation_cells_are_child_runs_of_one_parent_with_the_report(project):
    dst, _ = project
    client = _client(dst)
    cells = pd.read_csv(dst / "reports/ablation/fusion_seg/cells.csv")
    assert len(cells) == 12
    parents = {client.get_run(r).data.tags["mlflow.parentRunId"] for r in cells.run_id}
    assert len(parents) == 1
    parent = parents.pop()
    names = {client.get_run(r).info.run_name for r in cells.run_id}
    assert "fusion_seg/mri/seed2" in names
    arts = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.md" in arts and "report/figures" in arts


def test_failed_cell_is_marked_and_the_report_shows_the_gap(project):
    dst, _ = project
    client = _client(dst)
    cells = pd.read_csv(dst / "reports/ablation/fusion_seg/cells.csv")
    failed = cells[cells.cell == "diverge"]
    assert (failed.status == "failed").all()
    run = client.get_run(failed.run_id.iloc[0])
    assert run.info.status == "FAILED" and "non-finite training loss" in run.data.tags["failure_reason"]
    assert (cells[cells.cell != "diverge"].status == "finished").all()
    md = (dst / "reports/ablation/fusion_seg/report.md").read_text()
    assert "## Gaps" in md and "| diverge | 1 | failed | non-finite training loss" in md
    for t in ("Uni- vs bi- vs tri-modal", "Fusion strategy", "## Claims", "Loss curve", "Missing modality"):
        assert t in md
    mm = pd.read_csv(dst / "reports/ablation/fusion_seg/missing_modality.csv")
    assert set(mm.condition) == {"full", "minus_us", "minus_mg", "minus_mri"}


def test_promotion_by_repro_sets_aliases_tags_and_model_card(project):
    dst, _ = project
    client = _client(dst)
    d = json.loads((dst / "reports/promotion/fusion_seg.json").read_text())
    assert d["action"] == "promoted" and d["version"] == "1"
    assert str(client.get_model_version_by_alias("fusion_seg", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("fusion_seg", "challenger").version) == "1"
    v = client.get_model_version("fusion_seg", "1")
    assert v.tags["promotion.decision"] == "promoted" and v.tags["gate.data_validated"].startswith("pass")
    assert "research use only, not for diagnosis" in v.description
    assert any(a.path == "model_card_v1.md" for a in client.list_artifacts(v.run_id))


def test_promote_twice_with_nothing_new_changes_nothing(project):
    dst, _ = project
    client = _client(dst)
    n_before = len(client.search_model_versions("name='fusion_seg'"))
    r = _sh("medops promote fusion_seg", dst)
    assert "UNCHANGED" in r.stdout and "nothing new" in r.stdout
    assert len(client.search_model_versions("name='fusion_seg'")) == n_before
    assert str(client.get_model_version_by_alias("fusion_seg", "champion").version) == "1"


def test_rollback_without_previous_champion_is_a_clear_error(project):
    dst, _ = project
    client = _client(dst)
    r = _sh("medops promote fusion_seg --rollback", dst, check=False)
    assert r.returncode == 2 and "no previous champion" in r.stderr and "aliases unchanged" in r.stderr
    assert str(client.get_model_version_by_alias("fusion_seg", "champion").version) == "1"


def test_promotion_refused_when_the_data_failed_validation(project):
    dst, _ = project
    client = _client(dst)
    v1 = client.get_model_version("fusion_seg", "1")
    client.set_tag(v1.run_id, "validation", "failed")        # its data did not pass the gate
    client.delete_registered_model_alias("fusion_seg", "champion")
    client.set_registered_model_tag("fusion_seg", "champion_history", "[]")
    try:
        r = _sh("medops promote fusion_seg", dst)
        assert "REFUSED" in r.stdout and "did not pass validation" in r.stdout
        assert "champion: none" in r.stdout
        from mlflow.exceptions import MlflowException

        with pytest.raises(MlflowException, match="alias champion not found"):
            client.get_model_version_by_alias("fusion_seg", "champion")
        assert client.get_model_version("fusion_seg", "1").tags["promotion.decision"] == "refused"
    finally:
        client.set_tag(v1.run_id, "validation", "passed")
        _sh("medops promote fusion_seg", dst)
    assert str(client.get_model_version_by_alias("fusion_seg", "champion").version) == "1"


def test_rollback_restores_the_previous_champion(project):
    dst, _ = project
    client = _client(dst)
    cells = pd.read_csv(dst / "reports/ablation/fusion_seg/cells.csv")
    champion_run = client.get_model_version("fusion_seg", "1").run_id
    other = cells[(cells.status == "finished") & (cells.run_id != champion_run)].run_id.iloc[0]
    v2 = client.create_model_version("fusion_seg", client.get_model_version("fusion_seg", "1").source, run_id=other)
    client.set_registered_model_alias("fusion_seg", "champion", v2.version)
    client.set_registered_model_tag("fusion_seg", "champion_history", json.dumps(["1", v2.version]))
    r = _sh("medops promote fusion_seg --rollback", dst)
    assert f"from v{v2.version} to v1" in r.stdout
    assert str(client.get_model_version_by_alias("fusion_seg", "champion").version) == "1"


def test_predict_with_the_champion_and_refuse_bad_input(project, tmp_path):
    dst, _ = project
    case = tmp_path / "case_a"
    case.mkdir()
    src = dst / "data/raw/breast-trimodal"
    for m in ("us", "mg", "mri"):
        shutil.copy(src / m / "case_00001.png", case / f"{m}.png")
    out = tmp_path / "pred"
    scratch = tmp_path / "scratch"   # the model is downloaded to a temporary folder that is removed after loading
    scratch.mkdir()
    r = _sh(f"medops predict --model models:/fusion_seg@champion --input {case} --out {out}", dst,
            extra_env={"TMPDIR": str(scratch)})
    assert "case_a" in r.stdout
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("medops-")]
    summary = json.loads((out / "case_a.json").read_text())
    assert summary["model_version"] == "1" and summary["image_size"] == 64 and summary["validation"] == "passed"
    from medops.data.io import read_image

    mask = read_image(out / "case_a_mask.png")
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
    # manifest input works too
    r = _sh(f"medops predict --input {src / 'manifest.parquet'} --out {tmp_path / 'pred_all'}", dst)  # default model
    assert len(list((tmp_path / "pred_all").glob("case_*.json"))) == 24
    # bad input: a truncated MRI is refused with the reason, nothing predicted
    (case / "mri.png").write_bytes((case / "mri.png").read_bytes()[:100])
    bad_out = tmp_path / "pred_bad"
    r = _sh(f"medops predict --input {case} --out {bad_out}", dst, check=False)
    assert r.returncode == 1 and "mri.png" in r.stderr and "rule readable" in r.stderr
    assert not list(bad_out.glob("*.json")) and not list(bad_out.glob("*_mask.png"))


def test_changing_one_cell_reruns_only_that_cell(project):
    dst, _ = project
    params = dst / "params.yaml"
    original = params.read_text()
    try:
        edit_params(params, lambda p: p["ablation"]["fusion_seg"]["cells"]["concat"].update(arch="fusion_seg"))
        st = _sh("dvc status", dst).stdout
        changed = {ln.rstrip(":") for ln in st.splitlines() if ln and not ln.startswith((" ", "\t"))}
        assert {"ablate@concat-1", "ablate@concat-2", "ablate@concat-3"} <= changed
        assert not any(c.startswith(("ablate@mri", "ablate@tri_attention", "ablate@diverge", "train", "generate"))
                       for c in changed), changed
        params.write_text(original)
        edit_params(params, lambda p: p["ablation"]["fusion_seg"].update(seeds=[1, 2, 3, 4]))
        st = _sh("dvc status", dst).stdout
        changed = {ln.rstrip(":") for ln in st.splitlines() if ln and not ln.startswith((" ", "\t"))}
        new = {c for c in changed if c.startswith("ablate@")}
        assert new == {"ablate@tri_attention-4", "ablate@mri-4", "ablate@concat-4", "ablate@diverge-4"}, new
    finally:
        params.write_text(original)


def test_the_ablation_shares_its_code_through_one_inputs_file_and_keeps_the_lock_small(project):
    """Each ablation stage depends on the inputs stage's file, not on ~40 code paths and the family's params, so
    its dvc.lock entry stays small (DVC rewrites the whole lock after every stage); editing shared code still
    reruns every cell, through that file."""
    import yaml

    dst, _ = project
    lock = yaml.safe_load((dst / "dvc.lock").read_text())["stages"]
    cells = {k: v for k, v in lock.items() if k.startswith("ablate@")}
    assert cells and all(len(yaml.safe_dump(v).splitlines()) < 40 for v in cells.values()), \
        max(len(yaml.safe_dump(v).splitlines()) for v in cells.values())
    assert len(yaml.safe_dump(lock["train"]).splitlines()) > 150       # what a stage with its own list costs

    def changed():
        st = _sh("dvc status", dst).stdout
        return {ln.rstrip(":") for ln in st.splitlines() if ln and not ln.startswith((" ", "\t"))}

    code = dst / "src/medops/families/fusion_seg/evaluation.py"
    original = code.read_text()
    try:
        code.write_text(original + "\n# edited\n")
        assert "ablation_inputs" in changed()
        _sh("dvc repro ablation_inputs", dst)
        assert {f"ablate@{c}" for c in ("concat-1", "mri-2", "tri_attention-3")} <= changed()
    finally:
        code.write_text(original)
        _sh("dvc repro ablation_inputs", dst)        # the same content again: every cell is up to date
    assert not {c for c in changed() if c.startswith(("ablate", "ablation_inputs"))}


def test_cli_train_killed_mid_run_then_resumed_matches_uninterrupted(project):
    """`medops train` SIGKILLed after its first checkpoint, then `--resume`: same history, same MLflow run."""
    import signal
    import time

    import torch

    dst, _ = project
    params = dst / "params.yaml"
    original = params.read_text()
    saved = {p: p.read_bytes() for p in (dst / "models/fusion_seg").iterdir() if p.is_file()}
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        edit_params(params, lambda p: p["fusion_seg"]["train"]["epochs"].update(smoke=8))
        _sh("medops train fusion_seg", dst)
        ref = pd.read_csv(dst / "models/fusion_seg/history.csv")
        assert len(ref) == 8
        (dst / "models/fusion_seg/last.pt").unlink()  # so polling only sees this run's checkpoint
        proc = subprocess.Popen(["medops", "train", "fusion_seg", "--force"], cwd=dst, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = dst / "models/fusion_seg/last.pt"
        t0, killed_at = time.time(), None
        while time.time() - t0 < 120 and proc.poll() is None:
            if last.exists():
                try:
                    killed_at = torch.load(last, weights_only=True)["epoch"]
                except Exception:
                    killed_at = None  # being written
                if killed_at is not None:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
        proc.wait()
        assert killed_at is not None and killed_at < 8, "the run was not killed mid-training"
        run_id = json.loads((dst / "models/fusion_seg/run.json").read_text())["run_id"]
        _sh("medops train fusion_seg --resume", dst)
        resumed = pd.read_csv(dst / "models/fusion_seg/history.csv")
        assert len(resumed) == 8
        for col in ("train_loss", "val_loss", "val_dice"):
            assert (ref[col] - resumed[col]).abs().max() < 1e-6, col
        assert json.loads((dst / "models/fusion_seg/run.json").read_text())["run_id"] == run_id
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
        client = MlflowClient()
        assert client.get_run(run_id).info.status == "FINISHED"
        steps = sorted({m.step for m in client.get_metric_history(run_id, "train_loss")})
        assert steps == list(range(1, 9))
    finally:
        params.write_text(original)
        for p, b in saved.items():
            p.write_bytes(b)


def test_ddp_two_processes_gloo_matches_one_process(project):
    """`medops train --nproc 2` (torchrun, gloo on CPU): one MLflow run, one set of checkpoints, and the
    same losses as one process with the same global batch within 0.01 (sampling order differs)."""
    dst, _ = project
    saved = {p: p.read_bytes() for p in (dst / "models/fusion_seg").iterdir() if p.is_file()}
    client = _client(dst)
    exp = client.get_experiment_by_name("fusion_seg").experiment_id
    try:
        _sh("medops train fusion_seg", dst)
        one = pd.read_csv(dst / "models/fusion_seg/history.csv")
        n_runs = len(client.search_runs([exp]))
        _sh("medops train fusion_seg --nproc 2 --force", dst)
        two = pd.read_csv(dst / "models/fusion_seg/history.csv")
        assert len(client.search_runs([exp])) == n_runs + 1
        run = client.get_run(json.loads((dst / "models/fusion_seg/run.json").read_text())["run_id"])
        assert run.data.params["world_size"] == "2" and run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(two)
        files = sorted(p.name for p in (dst / "models/fusion_seg").glob("*.pt"))
        assert files == ["best.pt", "last.pt"]
        assert len(one) == len(two)
        for col in ("train_loss", "val_loss"):
            assert (one[col] - two[col]).abs().max() < 0.01, (col, one[col].tolist(), two[col].tolist())
        # resume works the same under torchrun: kill the 2-process job after its first checkpoint, resume it
        import signal

        import torch

        last = dst / "models/fusion_seg/last.pt"
        last.unlink()
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
        env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.Popen(["medops", "train", "fusion_seg", "--nproc", "2", "--force"], cwd=dst, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        killed_at, t0 = None, time.time()
        while time.time() - t0 < 180 and proc.poll() is None:
            if last.exists():
                try:
                    killed_at = torch.load(last, weights_only=True)["epoch"]
                except Exception:
                    killed_at = None
                if killed_at is not None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
        proc.wait()
        assert killed_at is not None and killed_at < len(two)
        _sh("medops train fusion_seg --nproc 2 --resume", dst)
        resumed = pd.read_csv(dst / "models/fusion_seg/history.csv")
        for col in ("train_loss", "val_loss", "val_dice"):
            assert (resumed[col] - two[col]).abs().max() < 1e-5, (col, resumed[col].tolist(), two[col].tolist())
    finally:
        for p, b in saved.items():
            p.write_bytes(b)


def _airflow(dst, tmp_path, cmd, check=True, warm: dict | None = None):
    env = {**os.environ, **(warm or {}), "PATH": f"{BIN}:{os.environ['PATH']}", "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(dst / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "MEDOPS_BIN": str(BIN / "medops")}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(cmd, cwd=dst, shell=True, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def _task_states(tmp_path, dag_id):
    """Task states of the DAG's run, read from the Airflow metadata DB (sqlite in AIRFLOW_HOME)."""
    import sqlite3

    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        rows = db.execute("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ?", (dag_id,)).fetchall()
    return {(t, m): s for t, m, s in rows}


def test_tasks_are_idempotent(project, warm):
    """Running a task twice: same outputs, no duplicate MLflow runs or registry versions."""
    dst, _ = project
    client = _client(dst)
    exp = client.get_experiment_by_name("fusion_seg").experiment_id
    n_runs = len(client.search_runs([exp]))
    n_versions = len(client.search_model_versions("name='fusion_seg'"))
    cell = dst / "models/fusion_seg/cells/mri/seed1"
    before = {p.name: p.read_bytes() for p in cell.iterdir() if p.is_file()}
    r = _sh("medops train fusion_seg --cell mri --seed 1", dst, extra_env=warm)
    assert "already trained with these inputs" in r.stdout
    assert {p.name: p.read_bytes() for p in cell.iterdir() if p.is_file()} == before
    metrics = (dst / "reports/fusion_seg/metrics.json").read_text()
    for cmd in ("medops train fusion_seg", "medops evaluate fusion_seg", "medops report fusion_seg",
                "medops promote fusion_seg", "medops preprocess --dataset breast-trimodal",
                "medops validate --dataset breast-trimodal"):
        _sh(cmd, dst, extra_env=warm)
    assert (dst / "reports/fusion_seg/metrics.json").read_text() == metrics
    assert len(client.search_runs([exp])) == n_runs
    assert len(client.search_model_versions("name='fusion_seg'")) == n_versions


def test_airflow_dags_test_runs_the_fusion_dag(project, tmp_path, warm):
    """`airflow dags test fusion_seg` runs every task (the same CLI verbs as dvc) on the smoke profile;
    tasks whose inputs did not change do nothing, so the DAG adds no MLflow run."""
    dst, _ = project
    client = _client(dst)
    exp = client.get_experiment_by_name("fusion_seg").experiment_id
    n_runs = len(client.search_runs([exp]))
    _airflow(dst, tmp_path, "airflow db migrate")
    t0 = time.time()
    _airflow(dst, tmp_path, "airflow dags test fusion_seg", warm=warm)
    wall = time.time() - t0
    states = _task_states(tmp_path, "fusion_seg")
    assert all(s == "success" for s in states.values()), states
    assert sum(1 for k in states if k[0] == "ablate") == 12
    assert len(client.search_runs([exp])) == n_runs
    assert json.loads((dst / "reports/promotion/fusion_seg.json").read_text())["action"] in ("unchanged", "promoted",
                                                                                              "refused")
    assert wall < 600


def test_failed_validation_stops_the_dag_before_preprocessing(project, tmp_path, warm):
    dst, _ = project
    from medops.data.io import write_png

    mask = dst / "data/raw/breast-trimodal/mask/case_00002.png"
    original, params = mask.read_bytes(), (dst / "params.yaml").read_text()
    try:
        write_png(mask, np.zeros((256, 256), np.uint8))              # an empty mask
        edit_params(dst / "params.yaml", lambda p: p["orchestration"].update(retries=0))
        _airflow(dst, tmp_path, "airflow db migrate")
        r = _airflow(dst, tmp_path, "airflow dags test fusion_seg", check=False, warm=warm)
        states = _task_states(tmp_path, "fusion_seg")
        assert states[("validate", -1)] == "failed"
        assert states[("preprocess", -1)] == "upstream_failed"
        assert states[("train", -1)] == "upstream_failed" and states[("promote", -1)] == "upstream_failed"
        assert "mask_not_empty" in r.stdout + r.stderr
    finally:
        mask.write_bytes(original)
        (dst / "params.yaml").write_text(params)
        _sh("medops validate --dataset breast-trimodal", dst)


def test_kubeflow_pipeline_runs_with_the_local_runner(project, tmp_path, warm, monkeypatch):
    """The same pipeline that compiles for a cluster runs every step locally (kfp.local SubprocessRunner)."""
    import yaml

    sys.path.insert(0, str(ROOT / "components"))
    import medops_kfp
    from kfp import local

    dst, _ = project
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    params = yaml.safe_load((dst / "params.yaml").read_text())
    before = json.loads((dst / "reports/promotion/fusion_seg.json").read_text())
    cwd = os.getcwd()
    try:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        monkeypatch.setenv("MEDOPS_WARM", warm["MEDOPS_WARM"])     # the local runner's steps inherit it
        medops_kfp.build_pipeline("fusion_seg", params)(project_dir=str(dst), medops_bin=str(BIN / "medops"))
    finally:
        os.chdir(cwd)
    runs = list((tmp_path / "kfp").glob("medops-fusion-seg-*"))
    assert len(runs) == 1
    steps = {p.name for p in runs[0].iterdir()}
    assert len(steps) == 6 + 12          # validate, preprocess, train, evaluate, report, promote + 12 cells
    after = json.loads((dst / "reports/promotion/fusion_seg.json").read_text())
    assert after["action"] in ("unchanged", "promoted", "refused") and before["family"] == after["family"]



def test_the_inputs_file_changes_exactly_when_a_listed_path_or_param_does(tmp_path, monkeypatch):
    """`medops inputs`: the content digests of the stage's deps and its params' values; bytecode and files it
    does not list leave it unchanged; a missing path, an unknown param or a templated stage is refused by name."""
    import yaml

    from medops.errors import MedopsError
    from medops.runs.inputs import write_inputs

    (tmp_path / "pkg/sub").mkdir(parents=True)
    (tmp_path / "pkg/a.py").write_text("a = 1\n")
    (tmp_path / "pkg/sub/b.py").write_text("b = 2\n")
    (tmp_path / "other.py").write_text("x = 0\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"fam": {"model": {"width": 8}, "seed": 1}, "unrelated": 3}))
    stage = {"cmd": "medops inputs dvc.yaml:inputs", "deps": ["pkg", "other.py"], "params": ["fam.model"],
             "outs": [{"models/inputs.json": {"cache": False}}]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "inputs": stage, "cells": {"matrix": {"i": [1, 2]}, **stage}}}))
    monkeypatch.chdir(tmp_path)
    out, rec = write_inputs("dvc.yaml:inputs")
    first = out.read_bytes()
    assert set(rec["paths"]) == {"pkg", "other.py"} and rec["params"] == {"fam.model": {"width": 8}}

    def again() -> bytes:
        write_inputs("dvc.yaml:inputs")
        return out.read_bytes()

    (tmp_path / "pkg/sub/__pycache__").mkdir()
    (tmp_path / "pkg/sub/__pycache__/b.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"fam": {"model": {"width": 8}, "seed": 2}, "unrelated": 4}))
    assert again() == first                                   # bytecode, unlisted params: same file
    (tmp_path / "pkg/sub/b.py").write_text("b = 3\n")
    assert again() != first                                   # a module inside a listed folder
    (tmp_path / "pkg/sub/b.py").write_text("b = 2\n")
    assert again() == first
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"fam": {"model": {"width": 16}, "seed": 2}}))
    assert again() != first                                   # a listed param
    (tmp_path / "other.py").unlink()
    with pytest.raises(MedopsError, match="other.py.*does not exist"):
        write_inputs("dvc.yaml:inputs")
    with pytest.raises(MedopsError, match="no matrix"):
        write_inputs("dvc.yaml:cells")
    with pytest.raises(MedopsError, match="no such stage"):
        write_inputs("dvc.yaml:nope")
    (tmp_path / "other.py").write_text("x = 0\n")
    stage["params"] = ["fam.missing"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"inputs": stage}}))
    with pytest.raises(MedopsError, match="fam.missing"):
        write_inputs("dvc.yaml:inputs")
