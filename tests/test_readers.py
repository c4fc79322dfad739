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


def test_header_declared_size_is_checked_before_decoding(tmp_path):
    """A DICOM or NIfTI whose header declares more pixels than validate.max_image_pixels is refused undecoded."""
    import nibabel as nib
    import numpy as np
    import pytest
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from medops.data.io import MAX_PIXELS, read_image, set_pixel_limit
    from medops.errors import DataError

    ds = Dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 60000, 60000, 16, 1
    ds.PixelData = b"\0" * 16  # far less than declared: decoding would fail or explode
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), tmp_path / "ok.nii.gz")
    old = MAX_PIXELS[0]
    try:
        with pytest.raises(DataError, match="max_image_pixels") as exc:
            read_image(tmp_path / "bomb.dcm")
        assert "3,600,000,000" in str(exc.value)
        set_pixel_limit(32)
        with pytest.raises(DataError, match="max_image_pixels"):
            read_image(tmp_path / "ok.nii.gz")
    finally:
        set_pixel_limit(old)


def test_file_names_stay_inside_their_folder(tmp_path):
    import pytest

    from medops.errors import DataError
    from medops.layout import file_in

    assert file_in(tmp_path, "case_0001", ".json") == tmp_path / "case_0001.json"
    for bad in ("../x", "/etc/passwd", "a/b", "..", ".hidden", "", "x" * 200, "a\\b"):
        with pytest.raises(DataError, match="safe_identifier"):
            file_in(tmp_path, bad, ".json")
