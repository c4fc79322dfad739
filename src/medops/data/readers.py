"""Reading a classification dataset the way a user stores it.

A dataset root holds one of (first match wins):

1. ``manifest.parquet`` — written by ``medops generate`` (columns case_id, patient_id,
   modality, path, split, label);
2. ``labels.csv`` — a CSV manifest with at least ``path`` and ``label`` (optional
   ``patient_id``, ``case_id``, ``split``, ``modality``);
3. a folder per class — ``<root>/<class>/<image>`` (PNG, JPEG, DICOM or NIfTI).

An optional ``dataset.json`` names the class list (``"classes": [...]``; the first class is
the negative one) — for a folder tree the class list defaults to the folder names. Splits that
are not given are made per patient and per class with the ``split`` seed from params.yaml.
Every file under a class folder is listed (also non-images), so the validation gate can
name a file that cannot be read instead of skipping it silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from medops.data.io import read_image, resolve_inside
from medops.errors import DataError

MRI_CHANNELS = ("t1", "t2", "flair")
LAYOUT_FILES = {"manifest.parquet", "labels.csv", "dataset.json"}


def dataset_info(root: str | Path) -> dict:
    """``dataset.json`` if present (classes, ...), plus ``labelled``: whether the layout carries a
    label per image (a class list, a ``labels.csv`` or one folder per class)."""
    root = Path(root)
    p = root / "dataset.json"
    info = json.loads(p.read_text()) if p.exists() else {}
    info["labelled"] = bool(info.get("classes")) or (root / "labels.csv").exists() or bool(_class_dirs(root))
    return info


def class_list(info: dict, manifest: pd.DataFrame) -> list[str]:
    """The dataset's classes, negative first: ``dataset.json`` ``classes``, else the sorted labels
    (for a folder tree: the folder names)."""
    return [str(c) for c in (info.get("classes") or sorted(manifest.label.astype(str).unique()))]


def _class_dirs(root: Path) -> list[str]:
    if not root.is_dir() or (root / "manifest.parquet").exists():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _assign_split(man: pd.DataFrame, fractions: dict, seed: int) -> pd.DataFrame:
    from medops.data.splits import apply_split

    parts = [apply_split(g, fractions, seed) for _, g in man.groupby("label", sort=True)]
    return pd.concat(parts).sort_index()


def _case_id(rel: str) -> str:
    return rel.rsplit(".", 2 if rel.endswith(".nii.gz") else 1)[0].replace("/", "_")


def _unlabelled_files(root: Path) -> pd.DataFrame:
    """The files directly under ``root`` that are not layout or table files: one image per case."""
    rows = [{"case_id": _case_id(f.name), "path": f.name} for f in sorted(root.iterdir())
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() not in (".csv", ".json", ".md", ".txt")]
    return pd.DataFrame(rows, columns=["case_id", "path"])


def load_manifest(root: str | Path, split_fractions: dict | None = None, split_seed: int = 0, *,
                  labeler=None) -> pd.DataFrame:
    """The dataset's manifest as a table (one row per image file), whatever the layout.

    ``labeler``: ``manifest -> labels`` for the rows without one, for a family that can read a label from
    something else the dataset holds (e.g. the class from each case's report). With it, ``labels.csv``
    may leave ``label`` empty or out, and a folder of images with no ``labels.csv`` is read as one case per
    image; the derived labels are marked in the column ``label_derived``."""
    root = Path(root)
    if (root / "manifest.parquet").exists():
        return pd.read_parquet(root / "manifest.parquet")
    fractions = split_fractions or {"train": 0.7, "val": 0.15, "test": 0.15}
    if (root / "labels.csv").exists():
        try:
            man = pd.read_csv(root / "labels.csv", dtype=str)
        except Exception as exc:
            raise DataError(str(root / "labels.csv"), f"manifest_readable: not a valid CSV ({exc})",
                            "save labels.csv as comma-separated text with a header row") from exc
        missing = {"path"} | (set() if labeler else {"label"})
        missing -= set(man.columns)
        if missing:
            raise DataError(str(root / "labels.csv"), f"manifest_columns: missing {sorted(missing)}",
                            "labels.csv needs at least the columns path,label" if labeler is None else
                            "labels.csv needs at least the column path (label may be left empty)")
        man["case_id"] = man.get("case_id", man.path.map(lambda p: Path(p).with_suffix("").as_posix().replace("/", "_")))
        man["patient_id"] = man.get("patient_id", man.case_id)
        man["modality"] = man.get("modality", "image")
    elif labeler is not None and not _class_dirs(root):
        man = _unlabelled_files(root)
        if man.empty:
            raise DataError(str(root), "manifest_exists: no images, labels.csv or class folders",
                            "put the images in the dataset folder (one per case), or a labels.csv with path")
        man["patient_id"], man["modality"] = man.case_id, "image"
    else:
        classes = _class_dirs(root)
        if not classes:
            raise DataError(str(root), "manifest_exists: no manifest.parquet, labels.csv or class folders",
                            "put one folder per class under the dataset root, or a labels.csv with path,label")
        rows = []
        for cls in classes:
            for f in sorted((root / cls).rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    rel = f.relative_to(root).as_posix()
                    cid = _case_id(rel)
                    rows.append({"case_id": cid, "patient_id": cid, "modality": "image", "path": rel, "label": cls})
        man = pd.DataFrame(rows, columns=["case_id", "patient_id", "modality", "path", "label"])
    if labeler is not None:
        lab = man["label"] if "label" in man else pd.Series(pd.NA, index=man.index, dtype=object)
        todo = lab.isna() | (lab.astype(str).str.strip() == "")
        man["label_derived"] = todo
        if todo.any():
            lab = lab.astype(object).copy()
            lab[todo] = list(labeler(man[todo]))
        man["label"] = lab.astype(str)
    if "split" not in man.columns or man.split.isna().all():
        man = _assign_split(man.drop(columns=["split"], errors="ignore"), fractions, split_seed)
    return man.reset_index(drop=True)


def manifest_digest(root: str | Path, manifest: pd.DataFrame | None = None) -> str:
    """What validation vouches for: the manifest file, or (folder / CSV layouts) the listed files and labels."""
    from medops.data.io import file_sha256

    root = Path(root)
    if (root / "manifest.parquet").exists():
        return file_sha256(root / "manifest.parquet")
    # without a manifest at hand, labels a family derives are not read: they follow from files digested here
    man = manifest if manifest is not None else load_manifest(root, labeler=lambda m: [""] * len(m))
    h = hashlib.sha256()
    for r in man.sort_values("path").itertuples():
        p = root / r.path
        st = p.stat() if p.exists() else None
        h.update(f"{r.path}|{r.label}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    for extra in ("labels.csv", "dataset.json"):
        if (root / extra).exists():
            h.update(file_sha256(root / extra).encode())
    return h.hexdigest()


def case_stack(root: str | Path, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """One case's image channels as float32 (C, H, W) in stored units (HU for CT) and its lesion mask.

    An ``image`` file gives 1 channel (grayscale) or 3 (RGB); ``t1``/``t2``/``flair`` files are
    stacked in that order."""
    root = Path(root)
    paths = {r.modality: resolve_inside(root, r.path) for r in rows.itertuples()}
    if "image" in paths:
        arr = read_image(paths["image"], color=True).astype(np.float32)
        stack = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]
    elif set(MRI_CHANNELS) <= set(paths):
        chans = [read_image(paths[c]).astype(np.float32) for c in MRI_CHANNELS]
        if len({c.shape for c in chans}) > 1:
            raise DataError(str(paths["t1"]), "channel_shapes: T1, T2 and FLAIR differ in size",
                            "resample the three sequences onto one grid")
        stack = np.stack(chans)
    else:
        case = rows.case_id.iloc[0]
        raise DataError(f"case {case}", f"all_modalities: has {sorted(paths)}",
                        "give each case one 'image' file, or all of t1, t2 and flair")
    mask = read_image(paths["mask"]) > 0 if "mask" in paths else None
    return stack, mask
