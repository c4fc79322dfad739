"""The validation gate.

Builds tables from the manifest (one row per image, per case, per patient) with
per-image statistics, runs Great Expectations 1.x suites written as code over
them, writes GX Data Docs plus ``summary.json``, and raises
:class:`ValidationFailed` with one line per failure (file or case, rule, fix).
Downstream stages call :func:`require_passed`, so nothing runs on data that
failed or was never validated.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat as stat_mod
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from medops.config import ValidateConfig
from medops.data.io import file_sha256, read_image, resolve_inside
from medops.errors import DataError, ValidationFailed

# expected geometry per modality of a fixed-geometry multi-modal dataset (the breast-trimodal layout)
MODALITY_SPEC = {
    "us": {"shape": (256, 256), "dtypes": ["uint8"], "max": 255},
    "mg": {"shape": (512, 512), "dtypes": ["uint16"], "max": 4095},
    "mri": {"shape": (256, 256), "dtypes": ["uint16"], "max": 65535},
    "mask": {"shape": (256, 256), "dtypes": ["uint8"], "max": 255},
}
# labelled image datasets (folder / CSV / simulated): sizes vary, so a minimum size instead of a shape
LABELLED_MODALITY_SPEC = {
    "image": {"min_size": 32, "dtypes": ["uint8", "uint16", "int16", "float32"], "max": None},
    "t1": {"min_size": 32, "dtypes": ["uint8", "uint16"], "max": None},
    "t2": {"min_size": 32, "dtypes": ["uint8", "uint16"], "max": None},
    "flair": {"min_size": 32, "dtypes": ["uint8", "uint16"], "max": None},
    "mask": {"min_size": 32, "dtypes": ["uint8"], "max": 255},
}
SPLITS = ["train", "val", "test"]
MANIFEST_COLUMNS = ["case_id", "patient_id", "modality", "path", "split"]


@dataclass(frozen=True)
class DatasetSpec:
    """The gate's rules for one kind of dataset; a family supplies it (``Family.validation_spec``).

    ``modalities``: modality -> {"shape": (h, w)} or {"min_size": n}, plus "dtypes" and "max".
    ``required``: modalities every case needs (a tuple, or a function of the modalities a case has).
    ``labelled``: each image carries a label from the class list; every class needs enough cases.
    ``mask_not_empty``: every mask outlines something (segmentation truth), up to ``max_mask_fraction``.
    ``present_only``: check only the modalities that occur in the manifest.
    ``extra_checks``: ``(root, manifest) -> [failure line]`` for rules the per-image tables cannot
    express (e.g. a volume's slices form one evenly spaced series; a table of findings points inside it).
    ``extra_files``: ``root -> [relative path]`` of files besides the images whose content the gate
    records (e.g. a findings table), so a later change to them is caught like a changed image.
    ``manifest_builder``: ``(root, split_fractions, split_seed) -> manifest`` for a dataset of your own
    with no ``manifest.parquet`` in a layout the family knows (e.g. one DICOM series folder per case).
    """

    modalities: dict = field(default_factory=lambda: dict(MODALITY_SPEC))
    required: tuple | Callable = tuple(MODALITY_SPEC)
    labelled: bool = False
    mask_not_empty: bool = True
    present_only: bool = False
    extra_checks: Callable | None = None
    extra_files: Callable | None = None
    manifest_builder: Callable | None = None

    def needs(self, present: list[str]) -> set[str]:
        return set(self.required(present) if callable(self.required) else self.required)


def _required_labelled(mods: list[str]) -> set[str]:
    """A labelled case needs one 'image' file, or all of T1/T2/FLAIR."""
    return {"t1", "t2", "flair"} if set(mods) & {"t1", "t2", "flair"} else {"image"}


FIXED_GEOMETRY = DatasetSpec()
LABELLED_IMAGES = DatasetSpec(modalities=LABELLED_MODALITY_SPEC, required=_required_labelled, labelled=True,
                              mask_not_empty=False, present_only=True)


def spec_for_layout(root: Path) -> DatasetSpec:
    """The rules a dataset's layout implies when its family gives none."""
    from medops.data.readers import dataset_info

    return LABELLED_IMAGES if dataset_info(root)["labelled"] else FIXED_GEOMETRY


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
    "min_size": Rule("min_size", "use images of at least 32x32 pixels (the backbones downsample 32x)", "path"),
    "safe_identifier": Rule("safe_identifier", "rename the case/patient id: 1-128 letters, digits, '.', '_' or '-', no path separators or '..' (ids become file names)", "case_id"),
    "deidentified": Rule("deidentified", "this dataset is marked for sharing (dataset.json \"sharing\": true): run `medops deidentify` on it first (DICOM PS3.15 Annex E basic profile)", "path"),
    "label_known": Rule("label_known", "use a label from the class list (dataset.json 'classes' or the class folder names), or add the class there", "path"),
    "class_min_images": Rule("class_min_images", "add images to this class (every split needs examples) or merge/drop the class", "label"),
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
        arr = read_image(full, color=True)
    except DataError as exc:
        out["error"] = exc.rule
        return out
    out["identifiable"] = _identifiable(full)
    out.update(readable=True, height=arr.shape[0], width=arr.shape[1], dtype=str(arr.dtype), sha256=file_sha256(full),
               channels=int(arr.shape[2]) if arr.ndim == 3 else 1)
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


def _identifiable(path: Path) -> str:
    """Why a DICOM file still identifies its patient ('' when it does not, or is not DICOM)."""
    if not path.name.lower().endswith(".dcm"):
        return ""
    import pydicom

    from medops.data.deidentify import is_identifiable

    try:
        return is_identifiable(pydicom.dcmread(path, stop_before_pixels=True)) or ""
    except Exception:
        return ""


def build_tables(root: Path, manifest: pd.DataFrame, progress: bool = True, spec: DatasetSpec = FIXED_GEOMETRY,
                 classes: list[str] | None = None, min_per_class: int = 1) -> dict[str, pd.DataFrame]:
    cols = MANIFEST_COLUMNS + (["label"] if classes is not None else [])
    missing = [c for c in cols if c not in manifest.columns]
    if missing:
        raise DataError(str(root / "manifest.parquet"), f"manifest_columns: missing {missing}",
                        f"the manifest needs columns {cols}")
    from medops.layout import is_safe_id

    rows = [
        {**r._asdict(), **_image_stats(root, r), "ids_safe": is_safe_id(str(r.case_id)) and is_safe_id(str(r.patient_id))}
        for r in tqdm(list(manifest[cols].itertuples(index=False)), desc="validate", disable=not progress)
    ]
    images = pd.DataFrame(rows)
    if classes is not None:
        images["label"] = images["label"].astype(str)
    present = images.groupby("case_id")["modality"].apply(lambda s: sorted(set(s)))
    cases = pd.DataFrame({
        "case_id": present.index,
        "missing": [",".join(sorted(spec.needs(m) - set(m))) for m in present],
    })
    pats = images.groupby("patient_id")["split"].apply(lambda s: ",".join(sorted(set(map(str, s)))))
    patients = pd.DataFrame({"patient_id": pats.index, "splits": pats.values,
                             "n_splits": [len(s.split(",")) for s in pats.values]})
    tables = {"images": images, "cases": cases, "patients": patients}
    if classes is not None:
        img = images[images.modality != "mask"]
        counts = img.drop_duplicates("case_id").groupby("label").size()
        tables["classes"] = pd.DataFrame({"label": [str(c) for c in classes],
                                          "n_cases": [int(counts.get(str(c), 0)) for c in classes]})
        tables["labels"] = img[["path", "case_id", "label"]].reset_index(drop=True)
        tables["meta"] = {"classes": [str(c) for c in classes], "min_per_class": min_per_class}
    return tables


def _suites(cfg: ValidateConfig, spec: dict = MODALITY_SPEC, meta: dict | None = None, mask_not_empty: bool = True,
            sharing: bool = False):
    """Expectation suites as code: {table: [(rule, expectation), ...]}."""
    import great_expectations.expectations as gxe

    suites = {
        "images": [
            ("path_inside_root", gxe.ExpectColumnValuesToBeInSet(column="path_ok", value_set=[True])),
            ("readable", gxe.ExpectColumnValuesToBeInSet(column="readable", value_set=[True], row_condition=None)),
            ("unique_image", gxe.ExpectColumnValuesToBeUnique(column="sha256")),
            ("split_known", gxe.ExpectColumnValuesToBeInSet(column="split", value_set=SPLITS)),
            ("safe_identifier", gxe.ExpectColumnValuesToBeInSet(column="ids_safe", value_set=[True])),
        ],
        "cases": [("all_modalities", gxe.ExpectColumnValuesToBeInSet(column="missing", value_set=[""]))],
        "patients": [("patient_one_split", gxe.ExpectColumnValuesToBeBetween(column="n_splits", min_value=1, max_value=1))],
    }
    if sharing:
        suites["images"].append(("deidentified", gxe.ExpectColumnValuesToBeInSet(column="identifiable", value_set=[""])))
    if meta is not None:  # labelled data: labels from the class list, enough cases per class
        suites["labels"] = [("label_known", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=meta["classes"]))]
        suites["classes"] = [("class_min_images", gxe.ExpectColumnValuesToBeBetween(
            column="n_cases", min_value=meta["min_per_class"]))]
    for mod, mspec in spec.items():
        if "shape" in mspec:
            h, w = mspec["shape"]
            s = [("shape", gxe.ExpectColumnValuesToBeBetween(column="height", min_value=h, max_value=h)),
                 ("shape", gxe.ExpectColumnValuesToBeBetween(column="width", min_value=w, max_value=w))]
        else:
            s = [("min_size", gxe.ExpectColumnValuesToBeBetween(column="height", min_value=mspec["min_size"])),
                 ("min_size", gxe.ExpectColumnValuesToBeBetween(column="width", min_value=mspec["min_size"]))]
        s += [
            ("dtype", gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=mspec["dtypes"])),
            ("finite", gxe.ExpectColumnValuesToBeBetween(column="n_nonfinite", min_value=0, max_value=0)),
        ]
        if mspec["max"] is not None:
            s += [("intensity_range", gxe.ExpectColumnValuesToBeBetween(column="min", min_value=0)),
                  ("intensity_range", gxe.ExpectColumnValuesToBeBetween(column="max", max_value=mspec["max"]))]
        if mod == "mask" and not mask_not_empty:
            s += [("mask_binary", gxe.ExpectColumnValuesToBeInSet(column="mask_binary", value_set=[True]))]
        elif mod == "mask":
            s += [
                ("mask_binary", gxe.ExpectColumnValuesToBeInSet(column="mask_binary", value_set=[True])),
                ("mask_not_empty", gxe.ExpectColumnValuesToBeBetween(
                    column="mask_fraction", min_value=0, strict_min=True, max_value=cfg.max_mask_fraction)),
            ]
        suites[f"images_{mod}"] = s
    return suites


def _frames(tables: dict[str, pd.DataFrame], spec: dict = MODALITY_SPEC) -> dict[str, pd.DataFrame]:
    img = tables["images"]
    frames = {"images": img, "cases": tables["cases"], "patients": tables["patients"]}
    for extra in ("labels", "classes"):
        if extra in tables:
            frames[extra] = tables[extra]
    for mod in spec:
        frames[f"images_{mod}"] = img[(img.modality == mod) & img.readable].reset_index(drop=True)
    return frames


def run_suites(tables: dict[str, pd.DataFrame], cfg: ValidateConfig, docs_dir: Path,
               spec: dict = MODALITY_SPEC, mask_not_empty: bool = True, replace_docs: bool = True,
               sharing: bool = False) -> list[str]:
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
        frames = _frames(tables, spec)
        for table, exps in _suites(cfg, spec, tables.get("meta"), mask_not_empty, sharing).items():
            df = frames[table]
            if df.empty:
                continue
            suite = ctx.suites.add(gx.ExpectationSuite(name=f"medops_{table}"))
            for rule, exp in exps:
                exp.meta = {"rule": rule, "fix": RULES[rule].fix}
                suite.add_expectation(exp)
            bd = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
            vd = ctx.validation_definitions.add(gx.ValidationDefinition(data=bd, suite=suite, name=table))
            index_cols = [c for c in ("case_id", "path", "patient_id", "label") if c in df.columns]
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
                        if rule.key == "label":
                            where = f"class '{where}'"
                        extra = f" (case {item['case_id']})" if rule.key == "path" and "case_id" in item else ""
                        detail = _detail(df, item, col)
                        failures.append(f"{where}{extra}: rule {rule.name} failed ({col}={detail}). Fix: {rule.fix}")
        site = work / "gx" / "uncommitted" / "data_docs" / "local_site"
        if docs_dir.exists() and replace_docs:  # the gate's own report folder: the new Data Docs replace the old
            shutil.rmtree(docs_dir)
        if site.exists():
            shutil.copytree(site, docs_dir, dirs_exist_ok=True)
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


def manifest_digest(root: Path, manifest: pd.DataFrame | None = None) -> str:
    from medops.data.readers import manifest_digest as digest

    return digest(root, manifest)


def validate_dataset(root: str | Path, cfg: ValidateConfig, report_dir: str | Path, progress: bool = True,
                     spec: DatasetSpec | None = None, manifest: pd.DataFrame | None = None,
                     split_fractions: dict | None = None, split_seed: int = 0, replace_docs: bool = True) -> dict:
    """Validate the dataset under ``root``; write the report; raise on any failure.

    ``spec`` (from the dataset's family; default: what the layout implies) decides the rules:
    fixed shapes per modality and non-empty masks (e.g. ``manifest.parquet`` of breast-trimodal), or
    minimum sizes, a known label per image and enough cases per class (``dataset.json`` with classes,
    a ``labels.csv`` or one folder per class).
    ``manifest``: validate this table instead of the one read from ``root`` (nothing is written under root).
    ``replace_docs=False``: never delete files already in ``report_dir`` (prediction folders of a user).
    """
    from medops.data.readers import class_list, dataset_info, load_manifest

    from medops.data.io import set_pixel_limit

    set_pixel_limit(cfg.max_image_pixels)
    root, report_dir = Path(root), Path(report_dir)
    spec = spec or spec_for_layout(root)
    built = manifest is None and spec.manifest_builder is not None and not (root / "manifest.parquet").exists()
    if built:
        manifest = spec.manifest_builder(root, split_fractions, split_seed)
    if manifest is None:
        if not spec.labelled and not (root / "manifest.parquet").exists():
            raise DataError(str(root / "manifest.parquet"), "manifest_exists: no manifest",
                            "run `medops generate` or write a manifest.parquet")
        manifest = load_manifest(root, split_fractions, split_seed)
    classes = class_list(dataset_info(root), manifest) if spec.labelled else None
    tables = build_tables(root, manifest, progress=progress, spec=spec, classes=classes,
                          min_per_class=cfg.min_cases_per_class)
    mods = {m: v for m, v in spec.modalities.items() if not spec.present_only or m in set(manifest.modality)}
    report_dir.mkdir(parents=True, exist_ok=True)
    sharing = bool(dataset_info(root).get("sharing", False))
    if "identifiable" not in tables["images"]:
        tables["images"]["identifiable"] = ""
    tables["images"]["identifiable"] = tables["images"]["identifiable"].fillna("")
    failures = run_suites(tables, cfg, report_dir / "data_docs", mods, spec.mask_not_empty, replace_docs, sharing)
    if spec.extra_checks is not None:
        failures += [f for f in spec.extra_checks(root, manifest) if f not in failures]
    tables["images"].to_csv(report_dir / "image_stats.csv", index=False)
    summary = {
        "status": "failed" if failures else "passed",
        "dataset": str(root),
        "labelled": spec.labelled,
        # a built manifest is vouched for by what `require_passed` recomputes from the folder itself
        "manifest_sha256": manifest_digest(root) if built else manifest_digest(root, manifest)
        if (root / "manifest.parquet").exists() or spec.labelled else "in-memory",
        "n_images": int(len(manifest)),
        "n_cases": int(manifest["case_id"].nunique()),
        "failures": failures,
        "data_docs": str(report_dir / "data_docs" / "index.html"),
    }
    files = {str(r.path): r.sha256 for r in tables["images"].itertuples() if isinstance(r.sha256, str)}
    for rel in (spec.extra_files(root) if spec.extra_files is not None else []):
        if (root / rel).is_file():
            files[str(rel)] = file_sha256(root / rel)
    summary["files_sha256"] = files  # what preprocess and train check: the content that passed, not just the manifest
    summary["content_sha256"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    if classes is not None:
        summary["classes"] = tables["meta"]["classes"]
        summary["class_counts"] = dict(zip(tables["classes"].label, map(int, tables["classes"].n_cases)))
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if failures:
        raise ValidationFailed(failures, summary["data_docs"])
    return summary


def require_passed(root: str | Path, report_dir: str | Path, verify_content: bool = True) -> dict:
    """Refuse to go on unless this exact manifest passed validation and (``verify_content``) every file
    still has the content that was validated (SHA-256), naming the first file that changed."""
    path = Path(report_dir) / "summary.json"
    if not path.exists():
        raise DataError(str(root), "validated: the dataset has not been validated", "run `medops validate` first")
    summary = json.loads(path.read_text())
    if summary.get("status") != "passed":
        raise DataError(str(root), f"validated: validation failed ({len(summary.get('failures', []))} failure(s))",
                        f"fix the data, then run `medops validate` (report: {summary.get('data_docs')})")
    if summary.get("manifest_sha256") != manifest_digest(Path(root)):
        raise DataError(str(root), "validated: the manifest changed since it was validated", "run `medops validate` again")
    if verify_content:
        files = summary.get("files_sha256")
        if files is None:
            raise DataError(str(path), "validated_content: validated by an older medops (no file digests)",
                            "run `medops validate` again")
        changed = first_changed_file(Path(root), files)
        if changed is not None:
            raise DataError(str(changed), "validated_content: the file's content changed since it was validated "
                            "(SHA-256 differs)", "run `medops validate` again (and look at why it changed)")
    return summary


DIGEST_CACHE = Path(".medops/digests")      # beside the locks: outside every DVC-tracked output


def first_changed_file(root: Path, files: dict[str, str]) -> Path | None:
    """The first file whose content is not its recorded SHA-256 (or that is gone), else None.

    Every stage checks the whole dataset, so a file whose ``stat`` — size, mtime, **ctime** and inode — is
    the one recorded when it last hashed to its validated digest is not read again (git's index and DVC's
    state do the same). ctime cannot be set from user space: any write, rename or ``os.utime`` resets it,
    so a file edited and given back its old mtime is still re-hashed (tested). The record lives in
    ``.medops/digests/`` of the working folder; without it, or where it cannot be written, every file is hashed.
    """
    root = root.resolve()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    cache_path = DIGEST_CACHE / f"{key}.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    folders: dict[str, Path] = {}       # each folder's chain checked once (inside the root, no symlink)
    fresh, changed = {}, None
    for rel, digest in files.items():
        parent, name = posixpath.split(rel) if isinstance(rel, str) else ("", "")
        if name in ("", ".", ".."):
            p = resolve_inside(root, rel)           # raises on what it refuses
        else:
            if parent not in folders:
                folders[parent] = resolve_inside(root, parent) if parent else root
            p = folders[parent] / name
        try:
            st = os.lstat(p)
        except OSError:
            changed = p
            break
        if stat_mod.S_ISLNK(st.st_mode):
            resolve_inside(root, rel)               # a symlink: refused as resolve_inside refuses it
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = cache.get(rel)
        if not (isinstance(hit, list) and hit[:4] == stamp and hit[4:] == [digest]):
            if file_sha256(p) != digest:
                changed = p
                break
        fresh[rel] = [*stamp, digest]
    if changed is None and fresh != cache:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}-", dir=cache_path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(fresh, f)
                os.replace(tmp, cache_path)
            finally:
                Path(tmp).unlink(missing_ok=True)     # gone after the replace; a failed write leaves nothing
        except OSError:
            pass
    return changed
