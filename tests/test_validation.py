"""The validation gate: every bad input gets a line naming the file/case, the rule and the fix,
exits non-zero, and nothing already produced is lost or overwritten."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medops.cli import app
from medops.data.io import write_png

runner = CliRunner()


def _validate(root: Path, report: Path):
    return runner.invoke(app, ["validate", "--data", str(root), "--report", str(report)])


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _set_path(root, case, modality, new_path):
    man = pd.read_parquet(root / "manifest.parquet")
    man.loc[(man.case_id == case) & (man.modality == modality), "path"] = new_path
    man.to_parquet(root / "manifest.parquet", index=False)


def _first_case(root):
    return sorted(pd.read_parquet(root / "manifest.parquet").case_id)[0]


def test_good_dataset_passes_and_writes_data_docs(dataset, tmp_path):
    res = _validate(dataset, tmp_path / "rep")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep/data_docs/index.html").exists()
    assert '"status": "passed"' in (tmp_path / "rep/summary.json").read_text()


def _corrupt_truncated(root, case):
    p = root / f"us/{case}.png"
    p.write_bytes(p.read_bytes()[:200])
    return f"us/{case}.png", "readable"


def _corrupt_shape(root, case):
    write_png(root / f"mri/{case}.png", np.zeros((200, 256), np.uint16) + 100)
    return f"mri/{case}.png", "shape"


def _corrupt_missing_modality(root, case):
    man = pd.read_parquet(root / "manifest.parquet")
    man = man[~((man.case_id == case) & (man.modality == "mg"))]
    man.to_parquet(root / "manifest.parquet", index=False)
    return case, "all_modalities"


def _corrupt_nonbinary_mask(root, case):
    m = (np.arange(256 * 256).reshape(256, 256) % 7).astype(np.uint8) * 30
    write_png(root / f"mask/{case}.png", m)
    return f"mask/{case}.png", "mask_binary"


def _corrupt_empty_mask(root, case):
    write_png(root / f"mask/{case}.png", np.zeros((256, 256), np.uint8))
    return f"mask/{case}.png", "mask_not_empty"


def _corrupt_dotdot(root, case):
    _set_path(root, case, "us", f"../outside/{case}.png")
    return f"../outside/{case}.png", "path_inside_root"


def _corrupt_absolute(root, case):
    _set_path(root, case, "us", str((root / f"us/{case}.png").resolve()))
    return str((root / f"us/{case}.png").resolve()), "path_inside_root"


def _corrupt_symlink(root, case):
    target = root.parent / "elsewhere.png"
    target.write_bytes((root / f"us/{case}.png").read_bytes())
    os.symlink(target, root / f"us/{case}_link.png")
    _set_path(root, case, "us", f"us/{case}_link.png")
    return f"us/{case}_link.png", "path_inside_root"


def _corrupt_patient_two_splits(root, case):
    man = pd.read_parquet(root / "manifest.parquet")
    pid = man[man.case_id == case].patient_id.iloc[0]
    other = man[man.split != man[man.case_id == case].split.iloc[0]].case_id.iloc[0]
    man.loc[man.case_id == other, "patient_id"] = pid
    man.to_parquet(root / "manifest.parquet", index=False)
    return pid, "patient_one_split"


def _corrupt_nan_pixels(root, case):
    import nibabel as nib

    arr = read = np.full((256, 256), 500.0, np.float32)
    arr[10:20, 10:20] = np.nan
    nib.save(nib.Nifti1Image(read.T, np.eye(4)), str(root / f"mri/{case}.nii.gz"))
    _set_path(root, case, "mri", f"mri/{case}.nii.gz")
    return f"mri/{case}.nii.gz", "finite"


def _corrupt_duplicate(root, case):
    other = sorted(pd.read_parquet(root / "manifest.parquet").case_id.unique())[1]
    (root / f"us/{other}.png").write_bytes((root / f"us/{case}.png").read_bytes())
    return f"us/{case}.png", "unique_image"


BAD = {f.__name__.removeprefix("_corrupt_"): f for f in [
    _corrupt_truncated, _corrupt_shape, _corrupt_missing_modality, _corrupt_nonbinary_mask, _corrupt_empty_mask,
    _corrupt_dotdot, _corrupt_absolute, _corrupt_symlink, _corrupt_patient_two_splits, _corrupt_nan_pixels,
    _corrupt_duplicate]}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_is_named_with_rule_and_fix(kind, dataset_copy, preprocessed, tmp_path):
    root = dataset_copy
    case = _first_case(root)
    before_pre = _digest(preprocessed)
    where, rule = BAD[kind](root, case)
    before_data = _digest(root)
    res = _validate(root, tmp_path / "rep")
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("FAILED")]
    hit = [ln for ln in lines if where in ln and f"rule {rule}" in ln]
    assert hit, f"no line naming {where} and rule {rule}:\n{res.output}"
    assert "Fix:" in hit[0]
    # nothing already produced is lost or overwritten
    assert _digest(root) == before_data
    assert _digest(preprocessed) == before_pre
    assert '"status": "failed"' in (tmp_path / "rep/summary.json").read_text()
    assert (tmp_path / "rep/data_docs/index.html").exists()


def test_downstream_refuses_unvalidated_or_failed_data(dataset_copy, tmp_path):
    from medops.errors import DataError
    from medops.validation import require_passed

    with pytest.raises(DataError, match="has not been validated"):
        require_passed(dataset_copy, tmp_path / "none")
    _corrupt_empty_mask(dataset_copy, _first_case(dataset_copy))
    _validate(dataset_copy, tmp_path / "rep")
    with pytest.raises(DataError, match="validation failed"):
        require_passed(dataset_copy, tmp_path / "rep")


def test_manifest_changed_after_validation_is_refused(dataset_copy, tmp_path):
    from medops.errors import DataError
    from medops.validation import require_passed

    assert _validate(dataset_copy, tmp_path / "rep").exit_code == 0
    _corrupt_missing_modality(dataset_copy, _first_case(dataset_copy))
    with pytest.raises(DataError, match="manifest changed"):
        require_passed(dataset_copy, tmp_path / "rep")


def test_content_check_rehashes_only_files_whose_stat_changed_and_sees_an_edit_with_its_old_mtime(
        dataset_copy, tmp_path, monkeypatch):
    """Every stage checks the whole dataset against the validated SHA-256s; a file whose stat (size, mtime,
    ctime, inode) is unchanged since it last hashed right is not read again. An edit that keeps the size and
    puts the old mtime back still changes ctime, so it is re-hashed and refused, naming the file."""
    import medops.validation.gate as gate
    from medops.errors import DataError

    assert _validate(dataset_copy, tmp_path / "rep").exit_code == 0
    monkeypatch.chdir(tmp_path)                 # the record lives in the working folder's .medops/
    reads = []
    real = gate.file_sha256
    monkeypatch.setattr(gate, "file_sha256", lambda p: reads.append(Path(p).name) or real(p))
    gate.require_passed(dataset_copy, tmp_path / "rep")
    n_files = len(reads)
    assert n_files > 10 and (tmp_path / ".medops" / "digests").is_dir()
    reads.clear()
    gate.require_passed(dataset_copy, tmp_path / "rep")
    assert reads == []                          # nothing changed: nothing read

    mask = next(dataset_copy.glob("mask/*.png"))
    st = mask.stat()
    data = bytearray(mask.read_bytes())
    data[-20] ^= 0xFF                           # same size, different content
    mask.write_bytes(bytes(data))
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns))     # the old mtime put back
    assert mask.stat().st_mtime_ns == st.st_mtime_ns and mask.stat().st_size == st.st_size
    with pytest.raises(DataError, match="validated_content") as err:
        gate.require_passed(dataset_copy, tmp_path / "rep")
    assert mask.name in str(err.value) and reads == [mask.name]

    # a validated file replaced by a symlink to the same bytes: refused as a link, content notwithstanding
    mask.write_bytes(bytes(data[:-20]) + bytes([data[-20] ^ 0xFF]) + bytes(data[-19:]))   # the original back
    gate.require_passed(dataset_copy, tmp_path / "rep")
    outside = tmp_path / "outside.png"
    outside.write_bytes(mask.read_bytes())
    mask.unlink()
    mask.symlink_to(outside)
    with pytest.raises(DataError, match="symlinks are not allowed"):
        gate.require_passed(dataset_copy, tmp_path / "rep")
