"""DICOM de-identification for your own data: ``medops deidentify``.

Implements the DICOM PS3.15 Annex E *Basic Application Level Confidentiality Profile* with the
attribute table of the ``dicom-anonymizer`` package (PS3.15 2026c: replace D, empty Z, remove X, remap
U, and the combined actions), applied with pydicom, plus these options of the profile:

* **Retain Longitudinal Temporal Information with Modified Dates**: every date (DA) and date-time (DT)
  of a patient is shifted by the same number of days (−365…−1, from a keyed hash of the patient id), so
  intervals between studies survive;
* **UIDs remapped consistently**: a UID becomes a keyed hash of itself (``pydicom.uid.generate_uid``
  with the key as entropy), so series and studies still link across files and runs;
* patient name and id become a keyed pseudonym (the same patient keeps the same pseudonym);
* private tags are removed; a file whose ``BurnedInAnnotation`` is ``YES`` is refused (identifying text
  in the pixels cannot be removed here);
* ``PatientIdentityRemoved = YES`` and ``DeidentificationMethod(CodeSequence)`` (113100 basic profile,
  113107 modified dates) are written.

The key (a random secret) lives outside the dataset (``--key``; created on first use) beside the
re-identification table ``<key>.map.csv`` (pseudonym -> original id, day shift): never share them.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import secrets
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from medops.data.io import write_folder_atomically
from medops.errors import DataError

METHOD = "PS3.15 Annex E Basic Profile, Modified Dates (medops)"  # LO: at most 64 characters
CODES = (("113100", "Basic Application Confidentiality Profile"),
         ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))


def load_key(path: Path, dataset_root: Path | None = None) -> bytes:
    """The de-identification key at ``path`` (created with 32 random bytes if missing); refused inside the
    dataset it protects."""
    path = Path(path)
    if dataset_root is not None and path.resolve().is_relative_to(Path(dataset_root).resolve()):
        raise DataError(str(path), "deid_key_outside: the key lies inside the dataset it protects",
                        "keep the key outside every shared folder, e.g. --key ~/.medops/deid.key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) < 16:
        raise DataError(str(path), "deid_key: shorter than 16 bytes", "delete it to create a new one (only before "
                        "any data was de-identified with it)")
    return key


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


class Deidentifier:
    """Applies the profile with one key: consistent pseudonyms, UIDs and date shifts across files."""

    def __init__(self, key: bytes):
        self.key = key
        self.seen: dict[str, tuple[str, int]] = {}  # original patient id -> (pseudonym, day shift)

    def pseudonym(self, patient_id: str) -> tuple[str, int]:
        if patient_id not in self.seen:
            h = _mac(self.key, "patient:" + patient_id)
            self.seen[patient_id] = (f"ANON-{h[:12].upper()}", -(int(h[12:20], 16) % 365 + 1))
        return self.seen[patient_id]

    def uid(self, old: str) -> str:
        from pydicom.uid import generate_uid

        return generate_uid(prefix="2.25.", entropy_srcs=[self.key.hex(), str(old)]) if old else old

    def _actions(self, shift_days: int) -> dict:
        """PS3.15 Annex E actions, with the options above in place of the plain ones."""
        from dicomanonymizer import simpledicomanonymizer as sda
        from pydicom.datadict import dictionary_VR

        actions = sda.initialize_actions("dicomfields_2026c")

        def remap_uid(dataset, tag):
            el = dataset.get(tag)
            if el is not None and el.value:
                el.value = [self.uid(v) for v in el.value] if el.VM > 1 else self.uid(str(el.value))

        def shift_date(dataset, tag):
            el = dataset.get(tag)
            if el is None or not el.value:
                return
            el.value = _shift(str(el.value), el.VR, shift_days)

        for tag, action in list(actions.items()):
            if len(tag) != 2:
                continue
            if action is sda.replace_UID or action is sda.delete_or_empty_or_replace_UID:
                actions[tag] = remap_uid
            else:
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    continue
                if vr in ("DA", "DT"):
                    actions[tag] = shift_date
        return actions

    def dataset(self, ds, where: str):
        """De-identify one pydicom Dataset in place."""
        from dicomanonymizer import simpledicomanonymizer as sda
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DataError(where, "burned_in_annotation: the pixels carry identifying text (BurnedInAnnotation YES)",
                            "remove this image, or blank the text region and set BurnedInAnnotation to NO")
        pid = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "unknown")
        pseudo, shift = self.pseudonym(pid)
        sda.anonymize_dataset(ds, extra_anonymization_rules=None, delete_private_tags=True,
                              base_rules_gen=lambda: self._actions(shift))
        ds.PatientID, ds.PatientName = pseudo, pseudo
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        codes = []
        for value, meaning in CODES:
            c = Dataset()
            c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, "DCM", meaning
            codes.append(c)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        if "SOPInstanceUID" in ds and hasattr(ds, "file_meta"):
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds


def _shift(value: str, vr: str, days: int) -> str:
    if vr == "DA" and len(value) >= 8:
        return (datetime.strptime(value[:8], "%Y%m%d") + timedelta(days=days)).strftime("%Y%m%d")
    if vr == "DT" and len(value) >= 8:
        return (datetime.strptime(value[:8], "%Y%m%d") + timedelta(days=days)).strftime("%Y%m%d") + value[8:]
    return value


def deidentify_folder(src: Path, dst: Path, key_file: Path, force: bool = False) -> dict:
    """De-identify every DICOM file under ``src`` into ``dst`` (same relative layout; non-DICOM files are
    copied unchanged). Written to a temporary folder first: ``dst`` appears complete or not at all, and an
    existing ``dst`` is replaced only with ``force``."""
    import pydicom

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataError(str(src), "deid_input: not a folder", "pass the folder holding the DICOM files")
    if dst.exists() and any(dst.iterdir()) and not force:
        raise DataError(str(dst), "no_overwrite: the output folder is not empty", "choose a new --out or pass --force")
    if dst.resolve().is_relative_to(src.resolve()):
        raise DataError(str(dst), "deid_output: inside the input folder", "write the de-identified copy elsewhere")
    key = load_key(key_file, dst)
    deid = Deidentifier(key)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    counts = {"dicom": 0}

    def produce(tmp: Path) -> None:
        for f in files:
            out = tmp / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                ds = pydicom.dcmread(f)
            except Exception:
                shutil.copy2(f, out)  # not DICOM: copied as it is
                continue
            deid.dataset(ds, str(f))
            ds.save_as(out)
            counts["dicom"] += 1

    write_folder_atomically(dst, produce)
    _append_map(Path(str(key_file) + ".map.csv"), deid.seen)
    return {"files": len(files), "dicom": counts["dicom"], "patients": len(deid.seen), "out": str(dst)}


def _append_map(path: Path, seen: dict) -> None:
    """The re-identification table (pseudonym, original id, day shift), kept beside the key."""
    known = set()
    if path.exists():
        with open(path) as f:
            known = {r["pseudonym"] for r in csv.DictReader(f)}
    new = [(p, pid, s) for pid, (p, s) in seen.items() if p not in known]
    write_header = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if write_header:
            w.writerow(["pseudonym", "original_patient_id", "day_shift"])
        w.writerows(new)
    os.chmod(path, 0o600)


def is_identifiable(ds) -> str | None:
    """Why a DICOM dataset still identifies its patient (None: de-identified by this profile)."""
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        return "PatientIdentityRemoved is not YES"
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "BurnedInAnnotation is YES"
    if any(el.tag.is_private for el in ds.iterall()):
        return "private tags present"
    return None
