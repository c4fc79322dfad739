"""Read one CT DICOM series (a folder of single-slice files) into a volume in Hounsfield units.

Every rule a series must meet is checked here, at the edge, with the file, the rule and the fix: each
file is DICOM, one series per folder, modality CT, the same pixel spacing, orientation and size on every
slice, slices evenly spaced along z with none missing, and finite voxel values. Slices are sorted by
Image Position (Patient) along the slice normal, not by file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medops.errors import DataError


@dataclass(frozen=True)
class Volume:
    hu: np.ndarray                    # (z, y, x) float32, Hounsfield units
    spacing: tuple                    # (z, y, x) mm
    origin: tuple                     # (x, y, z) mm of voxel (0, 0, 0), patient coordinates
    series_uid: str
    patient_id: str
    files: tuple                      # slice files, in z order

    def voxel_of(self, xyz_mm) -> np.ndarray:
        """Patient coordinates (x, y, z mm) -> voxel (z, y, x), fractional (axial, identity orientation)."""
        x, y, z = (float(v) - float(o) for v, o in zip(xyz_mm, self.origin))
        return np.array([z / self.spacing[0], y / self.spacing[1], x / self.spacing[2]])

    def contains(self, xyz_mm) -> bool:
        """Whether a point in patient coordinates (mm) lies inside the scanned volume (half a voxel margin)."""
        v = self.voxel_of(xyz_mm)
        return bool(np.all(v >= -0.5) and np.all(v <= np.array(self.hu.shape) - 0.5))

    def extent_mm(self) -> list[tuple[float, float]]:
        """(first, last) voxel centre per axis x, y, z in patient coordinates (mm), for error messages."""
        return [(round(o, 1), round(o + (n - 1) * s, 1)) for o, n, s in
                zip(self.origin, self.hu.shape[::-1], self.spacing[::-1])]


def read_series(folder: str | Path, *, headers_only: bool = False) -> Volume:
    """The CT series in ``folder`` (``*.dcm`` or extension-less files; hidden files ignored)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(str(folder), "series_folder: not a folder", "give the folder holding one DICOM series")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(str(folder), "series_not_empty: no files", "copy the series' DICOM files into the folder")
    heads = []
    for f in files:
        try:
            heads.append(pydicom.dcmread(f, stop_before_pixels=headers_only))
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise DataError(str(f), f"dicom_readable: not a readable DICOM file ({type(exc).__name__})",
                            "remove it from the series folder or re-export the series") from exc
    uids = sorted({str(getattr(h, "SeriesInstanceUID", "")) for h in heads})
    if len(uids) > 1:
        raise DataError(str(folder), f"one_series: {len(uids)} series mixed in one folder ({', '.join(u[-12:] for u in uids)})",
                        "put each series (SeriesInstanceUID) in its own folder and name the CT series to use")
    for f, h in zip(files, heads):
        mod = str(getattr(h, "Modality", ""))
        if mod != "CT":
            raise DataError(str(f), f"modality_ct: Modality is '{mod}', not CT",
                            "this family reads CT series only (Hounsfield units); remove the non-CT series")
        for tag in ("ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
            if tag not in h:
                raise DataError(str(f), f"geometry_tags: {tag} is missing", "re-export the series with its geometry tags")
    ps = {tuple(round(float(v), 4) for v in h.PixelSpacing) for h in heads}
    size = {(int(h.Rows), int(h.Columns)) for h in heads}
    orient = {tuple(round(float(v), 3) for v in getattr(h, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])) for h in heads}
    if len(ps) > 1 or len(size) > 1 or len(orient) > 1:
        what = "PixelSpacing" if len(ps) > 1 else ("Rows/Columns" if len(size) > 1 else "ImageOrientationPatient")
        raise DataError(str(folder), f"consistent_geometry: {what} differs between slices "
                        f"({sorted(ps if len(ps) > 1 else size if len(size) > 1 else orient)[:3]})",
                        "resample the series to one geometry or split it into series that each have one")
    o = np.array(next(iter(orient)), float)
    if not np.allclose(o, [1, 0, 0, 0, 1, 0], atol=1e-3):
        raise DataError(str(folder), f"axial_orientation: ImageOrientationPatient {o.tolist()} is not axial",
                        "reformat the series to axial slices (identity orientation)")
    normal = np.cross(o[:3], o[3:])
    pos = np.array([[float(v) for v in h.ImagePositionPatient] for h in heads])
    order = np.argsort(pos @ normal)
    z = (pos @ normal)[order]
    if len(z) > 1:
        dz = np.diff(z)
        step = float(np.median(dz))
        if step <= 0 or np.any(dz <= 1e-3):
            raise DataError(str(folder), "unique_positions: two slices share one position",
                            "remove the duplicated slice files")
        bad = np.flatnonzero(np.abs(dz - step) > 0.1 * step)
        if len(bad):
            k = int(bad[0])
            rule = "missing_slice" if dz[k] > 1.5 * step else "even_spacing"
            what = (f"gap of {dz[k]:.2f} mm between z = {z[k]:.2f} and {z[k + 1]:.2f} mm (slice spacing {step:.2f} mm)")
            raise DataError(str(folder), f"{rule}: {what}" + (": a slice is missing" if rule == "missing_slice" else
                                                                ": slices are not evenly spaced"),
                            "re-export the complete series (every slice), or resample it to even spacing")
    else:
        step = float(getattr(heads[0], "SliceThickness", 1.0) or 1.0)
    heads = [heads[i] for i in order]
    files = [files[i] for i in order]
    spacing = (step, *(float(v) for v in heads[0].PixelSpacing))
    hu = None
    if not headers_only:
        hu = np.empty((len(heads), *next(iter(size))), np.float32)
        for k, (f, h) in enumerate(zip(files, heads)):
            try:
                arr = h.pixel_array.astype(np.float32)
            except Exception as exc:  # pydicom raises many types for broken pixel data
                raise DataError(str(f), f"pixel_data: cannot decode the pixel data ({exc})", "re-export the slice") from exc
            arr = arr * float(getattr(h, "RescaleSlope", 1) or 1) + float(getattr(h, "RescaleIntercept", 0) or 0)
            if not np.isfinite(arr).all():
                raise DataError(str(f), f"finite: {int((~np.isfinite(arr)).sum())} NaN/Inf voxels",
                                "re-export the slice with finite values (air is -1000 HU)")
            hu[k] = arr
    return Volume(hu=hu, spacing=tuple(float(s) for s in spacing), origin=tuple(pos[order[0]].tolist()),
                  series_uid=uids[0], patient_id=str(getattr(heads[0], "PatientID", "")), files=tuple(f.name for f in files))
