"""Writing DICOM files for synthetic datasets and tests (the same tags real exports carry)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Identity:
    """Made-up patient identity written into synthetic DICOMs, so ingest must drop it."""

    patient_id: str
    patient_name: str = "SYNTHETIC^PATIENT"
    birth_date: str = "19700101"
    accession: str = "ACC0000"
    institution: str = "Synthetic General Hospital"
    referring: str = "SYNTH^REFERRER"
    other_ids: str = ""


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    identity: Identity,
    study_uid: str | None = None,
    modality: str = "DX",
    spacing: tuple[float, float] = (0.14, 0.14),
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    transfer_syntax: str | None = None,
) -> None:
    """Write ``pixels`` (H, W) unsigned ints as a single-frame DICOM.

    ``rescale`` = (slope, intercept) adds a Modality LUT; ``window`` = (centre, width) a VOI
    window; ``transfer_syntax`` a compressed encoding (e.g. ``pydicom.uid.RLELossless``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"expected (H, W) pixels, got {pixels.shape}")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = identity.patient_id
    ds.PatientName = identity.patient_name
    ds.PatientBirthDate = identity.birth_date
    ds.AccessionNumber = identity.accession
    ds.InstitutionName = identity.institution
    ds.ReferringPhysicianName = identity.referring
    if identity.other_ids:
        ds.OtherPatientIDs = identity.other_ids
    ds.Modality = modality
    ds.PixelSpacing = [f"{spacing[0]:.4f}", f"{spacing[1]:.4f}"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{rescale[0]:g}", f"{rescale[1]:g}")
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{window[0]:g}", f"{window[1]:g}")
    dtype = np.uint8 if ds.BitsAllocated == 8 else np.uint16
    if pixels.min() < 0 or pixels.max() >= 2**bits_stored:
        raise ValueError(f"pixel values outside 0..{2**bits_stored - 1}")
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
    if transfer_syntax is not None:
        ds.compress(transfer_syntax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
