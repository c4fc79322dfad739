"""`medops deidentify`: DICOM PS3.15 Annex E basic profile on a fixture with PHI in every attribute class."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medops.config import ValidateConfig
from medops.data.deidentify import deidentify_folder
from medops.errors import DataError, ValidationFailed

PHI = {  # attribute -> identifying value (classes of the profile: Z, D, X, X/Z/D, U, private)
    "PatientName": "Doe^Jane",                 # Z
    "PatientID": "MRN-0042-SECRET",            # Z
    "PatientBirthDate": "19610214",            # Z (date)
    "PatientAddress": "12 Hidden Lane",        # X
    "OtherPatientIDs": "OTHER-ID-7777",        # X
    "AccessionNumber": "ACC-998877",           # Z
    "ReferringPhysicianName": "Who^Doctor",    # Z
    "InstitutionName": "Saint Secret Hospital",  # X/Z/D
    "StationName": "CT-ROOM-SECRET",           # X/Z/D
    "DeviceSerialNumber": "SN-SECRET-123",     # X/Z/D
    "OperatorsName": "Op^Erator",              # X/Z/D
    "StudyID": "STUDY-SECRET-1",               # Z
}


def _dicom(path, *, study_uid, study_date, series_uid, sop_uid, burned_in="NO", patient="MRN-0042-SECRET"):
    ds = Dataset()
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.PatientID = patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, sop_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.AcquisitionDateTime = study_date + "101500"
    ds.Modality, ds.BurnedInAnnotation = "CT", burned_in
    ds.add_new(0x00291010, "LO", "PRIVATE-PHI-VALUE")
    ds.add_new(0x00290010, "LO", "ACME PRIVATE")
    ds.Rows = ds.Columns = 40
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = (np.arange(1600, dtype=np.uint16) % 4000).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def phi_folder(tmp_path):
    src = tmp_path / "export"
    study1, study2 = generate_uid(), generate_uid()
    series = generate_uid()
    _dicom(src / "a" / "img1.dcm", study_uid=study1, study_date="20240110", series_uid=series, sop_uid=generate_uid())
    _dicom(src / "a" / "img2.dcm", study_uid=study1, study_date="20240110", series_uid=series, sop_uid=generate_uid())
    _dicom(src / "b" / "img3.dcm", study_uid=study2, study_date="20240301", series_uid=generate_uid(),
           sop_uid=generate_uid())
    (src / "notes.txt").write_text("not DICOM")
    return src, (study1, study2)


def test_profile_removes_phi_keeps_intervals_and_links(phi_folder, tmp_path):
    src, (study1, study2) = phi_folder
    key = tmp_path / "keys" / "deid.key"
    r = deidentify_folder(src, tmp_path / "shared", key)
    assert (r["dicom"], r["patients"], r["files"]) == (3, 1, 4)
    out = {p.name: pydicom.dcmread(p) for p in (tmp_path / "shared").rglob("*.dcm")}
    raw = b"".join(p.read_bytes() for p in (tmp_path / "shared").rglob("*.dcm"))
    for value in [*PHI.values(), "PRIVATE-PHI-VALUE", study1, study2]:
        assert value.encode() not in raw, value
    a, b, c = out["img1.dcm"], out["img2.dcm"], out["img3.dcm"]
    assert a.PatientIdentityRemoved == "YES" and "Annex E" in a.DeidentificationMethod
    assert {x.CodeValue for x in a.DeidentificationMethodCodeSequence} == {"113100", "113107"}
    assert a.PatientID == c.PatientID and a.PatientID.startswith("ANON-")       # one pseudonym per patient
    assert a.StudyInstanceUID == b.StudyInstanceUID != c.StudyInstanceUID        # links kept, UIDs remapped
    assert not any(el.tag.is_private for el in a.iterall())
    d = lambda s: datetime.strptime(s, "%Y%m%d")  # noqa: E731
    assert a.StudyDate != "20240110" and (d(c.StudyDate) - d(a.StudyDate)).days == (d("20240301") - d("20240110")).days
    assert (tmp_path / "shared/notes.txt").read_text() == "not DICOM"
    table = (tmp_path / "keys/deid.key.map.csv").read_text()
    assert "MRN-0042-SECRET" in table and a.PatientID in table                     # re-identification stays private
    # the same key gives the same pseudonyms and UIDs (a second export of the same patient links up)
    deidentify_folder(src, tmp_path / "shared2", key)
    again = pydicom.dcmread(tmp_path / "shared2/a/img1.dcm")
    assert (again.PatientID, again.StudyInstanceUID, again.StudyDate) == (a.PatientID, a.StudyInstanceUID, a.StudyDate)


def test_burned_in_annotation_is_refused_and_nothing_is_written(phi_folder, tmp_path):
    src, (study1, _) = phi_folder
    _dicom(src / "a" / "img9.dcm", study_uid=study1, study_date="20240110", series_uid=generate_uid(),
           sop_uid=generate_uid(), burned_in="YES")
    with pytest.raises(DataError, match="burned_in_annotation") as exc:
        deidentify_folder(src, tmp_path / "shared", tmp_path / "deid.key")
    assert "img9.dcm" in str(exc.value)
    assert not (tmp_path / "shared").exists()


def test_key_inside_the_output_and_output_inside_input_are_refused(phi_folder, tmp_path):
    src, _ = phi_folder
    with pytest.raises(DataError, match="deid_key_outside"):
        deidentify_folder(src, tmp_path / "shared", tmp_path / "shared" / "deid.key")
    with pytest.raises(DataError, match="deid_output"):
        deidentify_folder(src, src / "out", tmp_path / "deid.key")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="no_overwrite"):
        deidentify_folder(src, tmp_path / "full", tmp_path / "deid.key")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_the_gate_refuses_identifiable_dicom_in_a_dataset_marked_for_sharing(tmp_path):
    from medops.validation import validate_dataset

    root = tmp_path / "ds"
    for cls in ("normal", "disease"):
        for i in range(6):
            _dicom(root / cls / f"{cls}{i}.dcm", study_uid=generate_uid(), study_date="20240110",
                   series_uid=generate_uid(), sop_uid=generate_uid(), patient=f"P{cls}{i}")
    (root / "dataset.json").write_text(json.dumps({"classes": ["normal", "disease"], "sharing": True}))
    vcfg = ValidateConfig(min_cases_per_class=1)
    with pytest.raises(ValidationFailed) as exc:
        validate_dataset(root, vcfg, tmp_path / "rep", progress=False)
    assert any("rule deidentified failed" in line and "normal0.dcm" in line for line in exc.value.lines)
    shared = tmp_path / "ds_shared"
    deidentify_folder(root, shared, tmp_path / "deid.key")
    s = validate_dataset(shared, vcfg, tmp_path / "rep2", progress=False)
    assert s["status"] == "passed"
