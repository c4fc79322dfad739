"""Image readers (PNG, DICOM, NIfTI) and safe path resolution.

Every failure is a :class:`medops.errors.DataError` naming the file, the rule
and the fix, so nothing crashes deep inside torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from medops.errors import DataError

SUPPORTED = (".png", ".dcm", ".nii", ".nii.gz")


def resolve_inside(root: str | Path, rel: str) -> Path:
    """Resolve a manifest path against the data root, refusing escapes.

    Refused: absolute paths, paths that climb out with ``..``, and symlinks
    anywhere along the path (a link could point anywhere at read time).
    """
    root = Path(root).resolve()
    if not isinstance(rel, str) or not rel:
        raise DataError(f"manifest path {rel!r}", "path_inside_root: empty path", "give a path relative to the data root")
    p = Path(rel)
    if p.is_absolute():
        raise DataError(rel, "path_inside_root: absolute paths are not allowed",
                        f"store the path relative to the data root {root}")
    cur = root
    for part in p.parts:
        cur = cur / part
        if cur.is_symlink():
            raise DataError(rel, "path_inside_root: symlinks are not allowed",
                            "copy the file into the data root instead of linking it")
    full = (root / p).resolve()
    if root != full and root not in full.parents:
        raise DataError(rel, "path_inside_root: the path leaves the data root",
                        f"move the file under {root} and reference it relative to it")
    return full


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2-D image as a numpy array in its stored dtype."""
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise DataError(str(path), "readable: file does not exist", "regenerate the dataset or fix the manifest path")
    if name.endswith(".png"):
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise DataError(str(path), "readable: not a decodable PNG (truncated or corrupt)",
                            "re-export or regenerate this image")
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
        return arr
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        import nibabel as nib

        try:
            img = nib.load(str(path))
            arr = np.asarray(img.dataobj)
        except Exception as exc:  # nibabel raises many types
            raise DataError(str(path), f"readable: not a valid NIfTI file ({exc})", "re-export the volume") from exc
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise DataError(str(path), f"readable: expected a 2-D image, got shape {arr.shape}",
                            "export one 2-D slice per file")
        return arr.T  # NIfTI is (x, y); images are (row, col)
    if name.endswith(".dcm"):
        import pydicom

        try:
            ds = pydicom.dcmread(str(path))
        except Exception as exc:
            raise DataError(str(path), f"readable: not a valid DICOM file ({exc})", "re-export the image") from exc
        if "PixelData" not in ds:
            raise DataError(str(path), "readable: DICOM has no pixel data", "export the image with its pixel data")
        return ds.pixel_array
    raise DataError(str(path), f"readable: unsupported format (supported: {', '.join(SUPPORTED)})",
                    "convert the image to PNG, DICOM or NIfTI")


def write_png(path: str | Path, arr: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), arr):
        raise DataError(str(path), "writable: could not write PNG", "check the folder permissions and disk space")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
