"""Plain folders of DICOM, NIfTI, PNG and MetaImage files: a researcher's own collection
(seed 002's pretraining pool mixes such folders with the public datasets).

Layout::

    ROOT/<patient folder>/**/<file>
        *.dcm, *.dicom, or a file of any other name that starts with the DICOM preamble
        ("DICM" at byte 128: extensionless and UID-named exports)
        *.nii, *.nii.gz
        *.png
        *.mhd            with its .raw / .zraw beside (the data file is not a sample)

The first folder under ROOT is the patient; anything below it is free (BIDS
``sub-01/ses-1/anat/``, a DICOM export's study and series folders...). One manifest row per
file: a DICOM series stored one file per slice gives one row (depth 1) per file. A
supported file directly under ROOT has no patient and becomes an error row
``no_patient_folder``. Hidden files and folders (names starting with ``.``, among them the
``.raysuite-complete`` marker), ``DICOMDIR`` index files and any other file (``.raw``,
``.json`` sidecars, text) are skipped: they are not samples and are not counted.

Nothing outside ROOT is read (:mod:`raysuite.data.walk`): a symbolic link to a file or
folder outside ROOT fails ``outside_root`` unopened (one inside is followed), as does a
MetaImage whose ``ElementDataFile`` leads out; a second path to a file already found
fails ``duplicate_image``, a path that is not UTF-8 ``bad_filename``.

Rows: ``sample_id`` is :func:`sample_id` (a salted hash of ``path``, ``f_<16 hex>``);
``patient_key`` the salted patient folder name; ``study`` the salted DICOM
StudyInstanceUID, else the salted parent folder path; ``modality`` the DICOM Modality tag,
else ``""`` (declare a NIfTI/PNG/MHD folder's modality in the pool source; the NIfTI
reader's "CT" is a default, not a fact); ``depth, height, width`` the axial slice stack of
:mod:`raysuite.data.slices` (NIfTI (X, Y, Z) RAS: depth Z, height Y, width X; MetaImage
(Z, Y, X); DICOM depth = frames; PNG 1); ``spacing`` in the reader's axis order (NIfTI and
MetaImage x, y, z; DICOM row, column; PNG none); ``labels`` ``[]``; ``extra``
``{"kind": "dicom" | "nifti" | "png" | "mhd", ...}`` (DICOM: salted ``series`` key,
``instance`` number, ``photometric``; PNG: ``bits``; MetaImage: ``header_modality`` when
its header names a DICOM modality code).

Every file is decoded once at ingest, by the code :func:`raysuite.data.slices.read_slice`
uses later: a header read would miss truncated voxel data and NaN volumes, which would
then fail a pretraining run instead of landing in the error table with the readers'
reason codes (``truncated``, ``nan_volume``, ``not_dicom``...).

Privacy: DICOM identity (names, IDs, birth dates, accession numbers, institutions) is
dropped by the readers and never reaches a column. Folder and file names do reach ``path``,
so each path is checked before its file is decoded (:mod:`raysuite.data.phi`): a file whose
path spells its own patient's identity (read from the DICOM header, as many PACS exports
name folders ``DOE^JOHN``, ``Doe, John (1970-01-01)`` or by MRN), or has a component that
looks like a name or a date whatever the file, is refused as ``path_names_patient``, its
error row showing those components as ``<redacted>``. When a DICOM's identity cannot be
read (a header cut short), its error row hides the patient folder too. NIfTI, PNG and MHD
files carry no identity to compare with: pseudonymise their patient folders before ingest.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from raysuite.data import phi, privacy
from raysuite.data.ingest import LayoutError, Ledger, SampleError
from raysuite.data.readers import ReadError, mhd_modality, read_mhd_header
from raysuite.data.slices import file_kind, read_volume
from raysuite.data.walk import Entry, walk

NAME = "folder"

_SUFFIXES = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".mhd": "mhd",
}
_NOT_SAMPLES = (".raw", ".zraw")
_SKIPPED_NAMES = ("DICOMDIR",)
REFUSED = (
    "a folder or file name spells a patient's name, ID, birth date, accession number or "
    "institution, or looks like a name or a date; rename it to a pseudonym (e.g. sub-001) "
    "and ingest again"
)


# --------------------------------------------------------------------------- layout


def sample_id(rel: str) -> str:
    """``f_<16 hex>``: a salted hash of the ROOT-relative path (stable for one salt, names
    no folder, and cannot be matched against candidate names without the salt)."""
    return privacy.salted_key(os.fsencode(rel).hex(), "f")


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _skipped(name: str) -> bool:
    """Names that are never samples, so never read: ``DICOMDIR`` and MetaImage data."""
    return name in _SKIPPED_NAMES or name.lower().endswith(_NOT_SAMPLES)


def _kind(path: Path) -> str | None:
    """The sample kind of a file, or None when it is not a sample."""
    name = path.name.lower()
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return "dicom" if _has_dicom_preamble(path) else None


def find_files(root: Path) -> list[Entry]:
    """Every sample file under ``root`` and every entry that fails before decoding
    (:func:`raysuite.data.walk.walk`: links out of the root, duplicates, non-UTF-8 names),
    sorted by path; hidden files and folders are not entered."""
    return walk(root, _kind, _skipped)


# --------------------------------------------------------------------------- ingest


def ingest(root: Path, ledger: Ledger, workers: int = 1) -> None:
    """Decode every sample file under ``root`` into one manifest row, or an error row:
    ``no_patient_folder`` for a file directly under ROOT, ``path_names_patient``, the
    walker's reasons (``outside_root``, ``duplicate_image``, ``bad_filename``...) or the
    readers' codes.

    Raises :class:`LayoutError` when ``root`` holds no DICOM, NIfTI, PNG or MHD file.
    """
    root = Path(root)
    entries = find_files(root)
    if not entries:
        raise LayoutError(
            root, "no DICOM, NIfTI, PNG or MHD files (expected ROOT/<patient folder>/**/<file>)"
        )
    items = []
    for entry in entries:
        if entry.problem:
            unchecked = entry.folder or file_kind(entry.rel) == "dicom"
            shown = _shown(entry.rel, unchecked and (entry.folder or "/" in entry.rel))
            ledger.fail(sample_id(entry.rel), shown, entry.problem, entry.detail)
        elif "/" not in entry.rel:
            ledger.fail(
                sample_id(entry.rel),
                _shown(entry.rel, False),
                "no_patient_folder",
                "file directly under ROOT: put each patient's files in a folder",
            )
        else:
            items.append((sample_id(entry.rel), entry.rel))
    ledger.run(functools.partial(_ingest_file, str(root)), items, workers)


def _shown(rel: str, patient_folder: bool, terms: phi.IdentityTerms | None = None) -> str:
    """``rel`` as an error row shows it: components that look like a name or a date, or
    that spell ``terms``, redacted; the patient folder too when ``patient_folder``."""

    def hidden(part: str) -> bool:
        return phi.looks_identifying(part) or (terms is not None and phi.names_identity(part, terms))

    return phi.redact(rel, hidden, patient_folder)


def _ingest_file(root: str, rel: str) -> dict[str, Any]:
    """Check one file's path, then decode it and return its manifest row (runs in a worker
    process). Every failure names the file as :func:`_shown` does."""
    path = Path(root) / rel
    kind = file_kind(path)
    terms = read_identity(path) if kind == "dicom" else None
    if (redacted := _shown(rel, False, terms)) != rel:
        raise SampleError(redacted, "path_names_patient", REFUSED)
    shown = _shown(rel, kind == "dicom" and terms is None)  # rel, or its patient folder hidden
    try:
        return _row(Path(root), rel, kind)
    except ReadError as err:
        raise ReadError(shown, err.reason, err.code) from None
    except SampleError as err:
        raise SampleError(shown, err.reason, err.detail) from None
    except Exception as err:  # only the class: a message may quote the file
        raise SampleError(shown, "unreadable", f"unexpected {type(err).__name__}") from None


def read_identity(path: Path) -> phi.IdentityTerms | None:
    """The identifying values of a DICOM's header, read without its pixels and leniently
    (``force``: a file cut short still gives the elements before the cut); None when the
    header cannot be read or names no patient (PatientID and PatientName both absent)."""
    import pydicom
    from pydicom.config import IGNORE, settings

    settings.reading_validation_mode = IGNORE  # validation warnings would echo element values
    try:
        ds = pydicom.dcmread(
            str(path),
            stop_before_pixels=True,
            force=True,
            specific_tags=list(privacy.IDENTIFYING_KEYWORDS),
        )
        named = any(str(ds.get(k) or "").strip() for k in ("PatientID", "PatientName"))
    except Exception:  # an unreadable header: the caller treats the identity as unknown
        return None
    return phi.identity_terms(ds) if named else None


def _row(root: Path, rel: str, kind: str) -> dict[str, Any]:
    """The manifest row of a file whose path passed the checks."""
    path = root / rel
    stack, meta = read_volume(path, root)
    depth, height, width = (int(n) for n in stack.shape)
    extra: dict[str, Any] = {"kind": kind}
    study = ""
    if kind == "dicom":
        extra.update(_dicom_series(path), photometric=meta.photometric)
        study = meta.study_key or ""
    elif kind == "png":
        extra["bits"] = meta.bits
    elif kind == "mhd" and (declared := mhd_modality(read_mhd_header(path))):
        extra["header_modality"] = declared
    return {
        "sample_id": sample_id(rel),
        "patient_key": privacy.salted_key(rel.split("/", 1)[0]),
        "study": study or privacy.salted_key(rel.rsplit("/", 1)[0], "s"),
        "path": rel,
        "modality": meta.modality if kind == "dicom" else "",
        "height": height,
        "width": width,
        "depth": depth,
        "spacing": [] if kind == "png" else [float(s) for s in meta.spacing],
        "labels": [],
        "source_split": "",
        "extra": extra,
    }


def _dicom_series(path: Path) -> dict[str, Any]:
    """Salted SeriesInstanceUID and InstanceNumber (to regroup a one-file-per-slice series)."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            str(path),
            stop_before_pixels=True,
            specific_tags=["SeriesInstanceUID", "InstanceNumber"],
        )
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        number = ds.get("InstanceNumber")
        out: dict[str, Any] = {"series": privacy.salted_key(uid, "se") if uid else ""}
        if number not in (None, ""):
            out["instance"] = int(number)
        return out
    except Exception:  # optional fields: the image itself was read
        return {}
