"""The validation gate.

Builds tables from the manifest (one row per image, per case, per patient) with
per-image statistics, runs Great Expectations 1.x suites written as code over
them, writes GX Data Docs plus ``summary.json``, and raises
:class:`ValidationFailed` with one line per failure (file or case, rule, fix).
Downstream stages call :func:`require_passed`, so nothing runs on data that
failed or was never validated.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from medops.config import ValidateConfig
from medops.data.io import file_sha256, read_image, resolve_inside
from medops.errors import DataError, ValidationFailed

# expected geometry per modality of the breast-trimodal dataset
MODALITY_SPEC = {
    "us": {"shape": (256, 256), "dtypes": ["uint8"], "max": 255},
    "mg": {"shape": (512, 512), "dtypes": ["uint16"], "max": 4095},
    "mri": {"shape": (256, 256), "dtypes": ["uint16"], "max": 65535},
    "mask": {"shape": (256, 256), "dtypes": ["uint8"], "max": 255},
}
SPLITS = ["train", "val", "test"]
MANIFEST_COLUMNS = ["case_id", "patient_id", "modality", "path", "split"]


@dataclass(frozen=True)
class Rule:
    name: str
    fix: str
    key: str  # column naming the offender: path (file) or case_id / patient_id


RULES = {
    "path_inside_root": Rule("path_inside_root", "use a relative path to a regular file under the data root (no '..', absolute path or symlink)", "path"),
    "readable": Rule("readable", "re-export or regenerate the file (it is missing, truncated or not an image)", "path"),
    "shape": Rule("shape", "resample the image to the modality's expected size", "path"),
    "dtype": Rule("dtype", "store the modality with its expected bit depth", "path"),
    "finite": Rule("finite", "replace NaN/Inf pixels (re-export the image)", "path"),
    "intensity_range": Rule("intensity_range", "rescale intensities into the modality's valid range", "path"),
    "mask_binary": Rule("mask_binary", "store masks with exactly two values, 0 and 255", "path"),
    "mask_not_empty": Rule("mask_not_empty", "each case needs a tumour outline; re-annotate or drop the case", "path"),
    "unique_image": Rule("unique_image", "remove the duplicated file or fix the manifest entry", "path"),
    "split_known": Rule("split_known", f"set split to one of {SPLITS}", "path"),
    "all_modalities": Rule("all_modalities", "add the missing modality file for the case or drop the case", "case_id"),
    "patient_one_split": Rule("patient_one_split", "re-split by patient (medops generate does this) so each patient is in one split", "patient_id"),
}


def _image_stats(root: Path, row) -> dict:
    out = {"path_ok": True, "readable": False, "height": np.nan, "width": np.nan, "dtype": None,
           "min": np.nan, "max": np.nan, "n_nonfinite": np.nan, "sha256": None,
           "mask_binary": True, "mask_fraction": np.nan, "error": ""}
    try:
        full = resolve_inside(root, row.path)
    except DataError as exc:
        out["path_ok"] = False
        out["error"] = exc.rule
        return out
    try:
        arr = read_image(full)
    except DataError as exc:
        out["error"] = exc.rule
        return out
    out.update(readable=True, height=arr.shape[0], width=arr.shape[1], dtype=str(arr.dtype), sha256=file_sha256(full))
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    out["n_nonfinite"] = int((~finite).sum())
    if finite.any():
        out["min"], out["max"] = float(a[finite].min()), float(a[finite].max())
    if row.modality == "mask":
        vals = np.unique(arr[finite]) if finite.any() else np.array([])
        out["mask_binary"] = bool(set(vals.tolist()) <= {0, 255} and out["n_nonfinite"] == 0)
        out["mask_fraction"] = float((a == 255).mean())
    return out


def build_tables(root: Path, manifest: pd.DataFrame, progress: bool = True,
                 required: tuple[str, ...] = tuple(MODALITY_SPEC)) -> dict[str, pd.DataFrame]:
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(str(root / "manifest.parquet"), f"manifest_columns: missing {missing}",
                        f"the manifest needs columns {MANIFEST_COLUMNS}")
    rows = [
        {**r._asdict(), **_image_stats(root, r)}
        for r in tqdm(list(manifest[MANIFEST_COLUMNS].itertuples(index=False)), desc="validate", disable=not progress)
    ]
    images = pd.DataFrame(rows)
    present = images.groupby("case_id")["modality"].apply(lambda s: sorted(set(s)))
    cases = pd.DataFrame({
        "case_id": present.index,
        "missing": [",".join(sorted(set(required) - set(m))) for m in present],
    })
    pats = images.groupby("patient_id")["split"].apply(lambda s: ",".join(sorted(set(map(str, s)))))
    patients = pd.DataFrame({"patient_id": pats.index, "splits": pats.values,
                             "n_splits": [len(s.split(",")) for s in pats.values]})
    return {"images": images, "cases": cases, "patients": patients}


def _suites(cfg: ValidateConfig):
    """Expectation suites as code: {table: [(rule, expectation), ...]}."""
    import great_expectations.expectations as gxe

    suites = {
        "images": [
            ("path_inside_root", gxe.ExpectColumnValuesToBeInSet(column="path_ok", value_set=[True])),
            ("readable", gxe.ExpectColumnValuesToBeInSet(column="readable", value_set=[True], row_condition=None)),
            ("unique_image", gxe.ExpectColumnValuesToBeUnique(column="sha256")),
            ("split_known", gxe.ExpectColumnValuesToBeInSet(column="split", value_set=SPLITS)),
        ],
        "cases": [("all_modalities", gxe.ExpectColumnValuesToBeInSet(column="missing", value_set=[""]))],
        "patients": [("patient_one_split", gxe.ExpectColumnValuesToBeBetween(column="n_splits", min_value=1, max_value=1))],
    }
    for mod, spec in MODALITY_SPEC.items():
        h, w = spec["shape"]
        s = [
            ("shape", gxe.ExpectColumnValuesToBeBetween(column="height", min_value=h, max_value=h)),
            ("shape", gxe.ExpectColumnValuesToBeBetween(column="width", min_value=w, max_value=w)),
            ("dtype", gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=spec["dtypes"])),
            ("finite", gxe.ExpectColumnValuesToBeBetween(column="n_nonfinite", min_value=0, max_value=0)),
            ("intensity_range", gxe.ExpectColumnValuesToBeBetween(column="min", min_value=0)),
            ("intensity_range", gxe.ExpectColumnValuesToBeBetween(column="max", max_value=spec["max"])),
        ]
        if mod == "mask":
            s += [
                ("mask_binary", gxe.ExpectColumnValuesToBeInSet(column="mask_binary", value_set=[True])),
                ("mask_not_empty", gxe.ExpectColumnValuesToBeBetween(
                    column="mask_fraction", min_value=0, strict_min=True, max_value=cfg.max_mask_fraction)),
            ]
        suites[f"images_{mod}"] = s
    return suites


def _frames(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    img = tables["images"]
    frames = {"images": img, "cases": tables["cases"], "patients": tables["patients"]}
    for mod in MODALITY_SPEC:
        frames[f"images_{mod}"] = img[(img.modality == mod) & img.readable].reset_index(drop=True)
    return frames


def run_suites(tables: dict[str, pd.DataFrame], cfg: ValidateConfig, docs_dir: Path) -> list[str]:
    """Run every suite through a GX checkpoint; build Data Docs into ``docs_dir``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    work = Path(tempfile.mkdtemp(prefix="medops-gx-"))
    try:
        ctx = gx.get_context(mode="file", project_root_dir=str(work))
        try:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        except Exception:  # progress bars are cosmetic
            pass
        source = ctx.data_sources.add_pandas("medops")
        failures: list[str] = []
        frames = _frames(tables)
        for table, exps in _suites(cfg).items():
            df = frames[table]
            if df.empty:
                continue
            suite = ctx.suites.add(gx.ExpectationSuite(name=f"medops_{table}"))
            for rule, exp in exps:
                exp.meta = {"rule": rule, "fix": RULES[rule].fix}
                suite.add_expectation(exp)
            bd = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
            vd = ctx.validation_definitions.add(gx.ValidationDefinition(data=bd, suite=suite, name=table))
            index_cols = [c for c in ("case_id", "path", "patient_id") if c in df.columns]
            cp = ctx.checkpoints.add(gx.Checkpoint(
                name=f"cp_{table}", validation_definitions=[vd], actions=[UpdateDataDocsAction(name="docs")],
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_cols}))
            result = cp.run(batch_parameters={"dataframe": df})
            for vr in result.run_results.values():
                for r in vr.results:
                    if r.success:
                        continue
                    meta = r.expectation_config.meta
                    rule = RULES[meta["rule"]]
                    col = r.expectation_config.kwargs.get("column")
                    for item in r.result.get("unexpected_index_list") or []:
                        where = item.get(rule.key) or item.get("path") or item.get("case_id")
                        extra = f" (case {item['case_id']})" if rule.key == "path" and "case_id" in item else ""
                        detail = _detail(df, item, col)
                        failures.append(f"{where}{extra}: rule {rule.name} failed ({col}={detail}). Fix: {rule.fix}")
        site = work / "gx" / "uncommitted" / "data_docs" / "local_site"
        if docs_dir.exists():
            shutil.rmtree(docs_dir)
        if site.exists():
            shutil.copytree(site, docs_dir)
        return sorted(set(failures), key=failures.index)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _detail(df: pd.DataFrame, item: dict, col: str | None):
    if col is None:
        return "?"
    if col in item:
        v = item[col]
    else:
        keys = [k for k in ("path", "case_id", "patient_id") if k in item and k in df.columns]
        sel = df
        for k in keys:
            sel = sel[sel[k] == item[k]]
        v = sel[col].iloc[0] if len(sel) and col in sel else "?"
    if col == "path_ok" or col == "readable":
        row = df[df["path"] == item.get("path")]
        if len(row) and row["error"].iloc[0]:
            return f"{v}: {row['error'].iloc[0]}"
    if col == "n_splits" and "splits" in df.columns:
        return f"{v} [{df[df.patient_id == item.get('patient_id')]['splits'].iloc[0]}]"
    return v


def manifest_digest(root: Path) -> str:
    return file_sha256(Path(root) / "manifest.parquet")


def validate_dataset(root: str | Path, cfg: ValidateConfig, report_dir: str | Path, progress: bool = True,
                     required: tuple[str, ...] = tuple(MODALITY_SPEC), manifest: pd.DataFrame | None = None) -> dict:
    """Validate the dataset under ``root``; write the report; raise on any failure.

    ``required``: the modalities every case must have (prediction inputs need no mask).
    ``manifest``: validate this table instead of ``root/manifest.parquet`` (nothing is written under root).
    """
    root, report_dir = Path(root), Path(report_dir)
    mpath = root / "manifest.parquet"
    if manifest is None:
        if not mpath.exists():
            raise DataError(str(mpath), "manifest_exists: no manifest",
                            "run `medops generate` or write a manifest.parquet")
        manifest = pd.read_parquet(mpath)
    tables = build_tables(root, manifest, progress=progress, required=required)
    report_dir.mkdir(parents=True, exist_ok=True)
    failures = run_suites(tables, cfg, report_dir / "data_docs")
    tables["images"].to_csv(report_dir / "image_stats.csv", index=False)
    summary = {
        "status": "failed" if failures else "passed",
        "dataset": str(root),
        "manifest_sha256": manifest_digest(root) if mpath.exists() else "in-memory",
        "n_images": int(len(manifest)),
        "n_cases": int(manifest["case_id"].nunique()),
        "failures": failures,
        "data_docs": str(report_dir / "data_docs" / "index.html"),
    }
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if failures:
        raise ValidationFailed(failures, summary["data_docs"])
    return summary


def require_passed(root: str | Path, report_dir: str | Path) -> dict:
    """Refuse to go on unless this exact manifest passed validation."""
    path = Path(report_dir) / "summary.json"
    if not path.exists():
        raise DataError(str(root), "validated: the dataset has not been validated", "run `medops validate` first")
    summary = json.loads(path.read_text())
    if summary.get("status") != "passed":
        raise DataError(str(root), f"validated: validation failed ({len(summary.get('failures', []))} failure(s))",
                        f"fix the data, then run `medops validate` (report: {summary.get('data_docs')})")
    if summary.get("manifest_sha256") != manifest_digest(Path(root)):
        raise DataError(str(root), "validated: the manifest changed since it was validated", "run `medops validate` again")
    return summary
