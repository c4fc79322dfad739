import numpy as np
import pytest

from medops.data.io import read_image, resolve_inside
from medops.errors import DataError


def test_dicom_without_pixel_data(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.PatientID = "x"
    p = tmp_path / "a.dcm"
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(DataError, match="no pixel data"):
        read_image(p)


def test_png_16_bit_roundtrip_and_unsupported(tmp_path):
    from medops.data.io import write_png

    a = (np.arange(64 * 64).reshape(64, 64) * 7).astype(np.uint16)
    write_png(tmp_path / "a.png", a)
    assert np.array_equal(read_image(tmp_path / "a.png"), a)
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported format"):
        read_image(tmp_path / "a.txt")


def test_resolve_inside_refuses_escapes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    assert resolve_inside(tmp_path, "a.png") == (tmp_path / "a.png").resolve()
    for bad in ("../a.png", str(tmp_path / "a.png"), "sub/../../a.png"):
        with pytest.raises(DataError, match="path_inside_root"):
            resolve_inside(tmp_path, bad)
