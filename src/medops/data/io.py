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

SUPPORTED = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")


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


MAX_PIXELS = [50_000_000]  # pixels per image decoded at most (params.yaml validate.max_image_pixels)


def set_pixel_limit(n: int) -> None:
    MAX_PIXELS[0] = int(n)


def _declared_pixels(path: Path, name: str) -> int | None:
    """Pixels an image declares in its header, read without decoding it (None: unknown format)."""
    if name.endswith((".png", ".jpg", ".jpeg")):
        from PIL import Image

        try:
            with Image.open(path) as im:  # header only
                return int(im.size[0]) * int(im.size[1])
        except Image.DecompressionBombError:
            return MAX_PIXELS[0] + 1
        except Exception:
            return None  # not decodable: the reader says so
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            return int(np.prod(nib.load(str(path)).header.get_data_shape()))
        except Exception:
            return None
    if name.endswith(".dcm"):
        import pydicom

        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            return int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * int(ds.get("NumberOfFrames", 1) or 1)
        except Exception:
            return None
    return None


def read_image(path: str | Path, color: bool = False) -> np.ndarray:
    """Read a 2-D image as a numpy array in its stored dtype.

    ``color=True`` keeps RGB images as (H, W, 3) in RGB order (else they become grayscale).
    DICOM values go through the modality LUT (RescaleSlope/Intercept: CT in Hounsfield units).
    """
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise DataError(str(path), "readable: file does not exist", "regenerate the dataset or fix the manifest path")
    n = _declared_pixels(path, name)
    if n is not None and n > MAX_PIXELS[0]:
        raise DataError(str(path), f"max_image_pixels: the header declares {n:,} pixels, over the limit of "
                        f"{MAX_PIXELS[0]:,} (not decoded)",
                        "downsample the image, or raise validate.max_image_pixels in params.yaml if it is genuine")
    if name.endswith((".png", ".jpg", ".jpeg")):
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise DataError(str(path), f"readable: not a decodable {path.suffix[1:].upper()} image (truncated, corrupt or not an image)",
                            "re-export or regenerate this image, or remove it from the folder")
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if color else cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
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
        try:
            arr = ds.pixel_array
        except Exception as exc:
            raise DataError(str(path), f"readable: DICOM pixel data cannot be decoded ({exc})",
                            "re-export the image uncompressed") from exc
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            from pydicom.pixels import apply_modality_lut

            arr = apply_modality_lut(arr, ds).astype(np.float32)
        if arr.ndim == 3 and not color and arr.shape[-1] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
        return arr
    raise DataError(str(path), f"readable: unsupported format (supported: {', '.join(SUPPORTED)})",
                    "convert the image to PNG, JPEG, DICOM or NIfTI, or remove it from the folder")


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


def write_folder_atomically(out: Path, produce):
    """``produce(tmp)`` fills a temporary folder beside ``out``, which then replaces ``out`` in one rename:
    ``out`` is complete or untouched, never half-written. Returns what ``produce`` returned."""
    import shutil
    import tempfile

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        result = produce(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
