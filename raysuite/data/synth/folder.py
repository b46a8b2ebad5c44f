"""Synthetic folder collection: T1-like brain MRIs as NIfTI volumes and DICOM MR series, one
patient folder each (:mod:`raysuite.data.formats.folder` describes the layout and ingests
it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
FOV_MM = (240.0, 240.0, 150.0)  # x, y, z of the synthetic acquisitions


@dataclass(frozen=True)
class _Tissue:
    """T1-weighted mean intensities (before the per-scan gain)."""

    scalp: float = 620.0
    skull: float = 90.0
    csf: float = 160.0
    grey: float = 500.0
    white: float = 780.0
    deep_grey: float = 580.0


def _smooth(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]
) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (``sigma`` in voxels)."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma, mode="wrap")
    field -= field.mean()
    return (field / max(float(field.std()), 1e-3)).astype(np.float32)  # ~0 when sigma >> shape


def brain_phantom(
    rng: np.random.Generator, size: int = 64, slices: int = 16
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A T1-like head, float32 ``(X, Y, Z)`` in RAS, and its voxel spacing (mm).

    Ellipsoidal scalp (bright), skull (dark), CSF rim, folded grey/white matter boundary
    (white matter brightest, as on T1), deep grey nuclei and two dark lateral ventricles;
    sizes and positions jitter per scan. A smooth multiplicative bias field, a per-scan
    gain (white matter about 1000-1800) and Rician noise make it look acquired.
    """
    spacing = (FOV_MM[0] / size, FOV_MM[1] / size, FOV_MM[2] / slices)
    axes = [
        (np.arange(n) + 0.5) * s - f / 2
        for n, s, f in zip((size, size, slices), spacing, FOV_MM, strict=True)
    ]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    z = z - 5.0  # the acquisition covers more of the brain than of the neck
    t = _Tissue()
    head = np.asarray([72.0, 92.0, 80.0]) * rng.uniform(0.92, 1.08, 3)
    centre = rng.normal(0, 3, 3)

    def radius(c: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.sqrt(
            ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2
        )

    r = radius(centre, head)
    folds = _smooth(rng, x.shape, (2.5, 2.5, 0.8))
    img = np.zeros(x.shape, np.float32)
    img[r < 1.0] = t.scalp
    img[r < 0.93] = t.skull
    img[r < 0.88] = t.csf
    img[r < 0.85 + 0.015 * folds] = t.grey
    img[r < 0.66 + 0.06 * folds] = t.white
    for side in (-1, 1):
        nucleus = centre + [side * rng.uniform(15, 20), rng.uniform(-4, 4), rng.uniform(-8, 0)]
        img[radius(nucleus, np.asarray([10.0, 14.0, 12.0]) * rng.uniform(0.85, 1.15, 3)) < 1] = (
            t.deep_grey
        )
        ventricle = centre + [side * rng.uniform(8, 11), rng.uniform(0, 8), rng.uniform(6, 14)]
        img[radius(ventricle, np.asarray([7.0, 26.0, 18.0]) * rng.uniform(0.8, 1.2, 3)) < 1] = t.csf
    img *= 1 + 0.03 * _smooth(rng, x.shape, (1.0, 1.0, 0.5))  # tissue texture
    tilt = rng.normal(0, 1, 3) * 0.12 / np.asarray(head)
    bias = np.exp(
        x * tilt[0]
        + y * tilt[1]
        + z * tilt[2]
        + 0.06 * _smooth(rng, x.shape, (size / 5, size / 5, slices / 4))
    )
    signal = img * bias * rng.uniform(1.3, 2.3)
    sigma = 0.02 * t.white * 1.8
    noisy = np.sqrt(
        (signal + rng.normal(0, sigma, x.shape)) ** 2 + rng.normal(0, sigma, x.shape) ** 2
    )
    return noisy.astype(np.float32), spacing


def _write_nifti(
    path: Path, ras: np.ndarray, spacing: tuple[float, float, float], as_int16: bool
) -> None:
    """int16 volumes are stored LPS-flipped (as many scanner exports), float32 ones RAS."""
    import nibabel as nib

    origin = [(0.5 - n / 2) * s for n, s in zip(ras.shape, spacing, strict=True)]  # voxel centres
    if as_int16:
        data = np.clip(np.rint(ras[::-1, ::-1]), -32768, 32767).astype(np.int16)
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        affine[:3, 3] = [-origin[0], -origin[1], origin[2]]
    else:
        data = ras.astype(np.float32)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = origin
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.header.set_zooms(spacing)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    # deterministic: a hash of the parts under pydicom's UID root (prefix=None would be random)
    return generate_uid(entropy_srcs=["/".join(["raysuite.folder", *map(str, parts)])])


def _write_mr_series(
    folder: Path,
    ras: np.ndarray,
    spacing: tuple[float, float, float],
    identity: Any,
    uid_parts: tuple[object, ...],
) -> int:
    """One MR DICOM per axial slice (``IM-0001.dcm``...), radiological orientation (columns
    from the patient's right to left, anterior up), 12-bit unsigned. Returns files written."""
    import pydicom
    from pydicom.uid import UID

    from raysuite.data.synth.dicom_writer import write_dicom

    study, series = _uid(*uid_parts, "study"), _uid(*uid_parts, "series")
    nx, ny, nz = ras.shape
    x_max = (nx / 2 - 0.5) * spacing[0]
    y_max = (ny / 2 - 0.5) * spacing[1]
    for k in range(nz):
        pixels = np.clip(np.rint(ras[::-1, ::-1, k].T), 0, 4095).astype(np.uint16)
        path = folder / f"IM-{k + 1:04d}.dcm"
        write_dicom(
            path,
            pixels,
            identity,
            study_uid=study,
            modality="MR",
            spacing=(spacing[1], spacing[0]),
            bits_stored=12,
        )
        ds = pydicom.dcmread(str(path))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(_MR_IMAGE_STORAGE)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(_uid(*uid_parts, "image", k))
        ds.SeriesInstanceUID = series
        ds.SeriesNumber, ds.InstanceNumber = "1", str(k + 1)
        ds.SeriesDescription = "T1 MPRAGE (synthetic)"
        ds.ScanningSequence, ds.SequenceVariant = ["GR", "IR"], ["SP", "MP"]
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime = "2300", "2.98", "900"
        ds.MagneticFieldStrength = "3"
        z_k = (k + 0.5) * spacing[2] - FOV_MM[2] / 2
        # LPS position of the first pixel (the patient's right-most, most anterior voxel)
        ds.ImagePositionPatient = [f"{-x_max:.3f}", f"{-y_max:.3f}", f"{z_k:.3f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{spacing[2]:.4f}"
        ds.SliceLocation = f"{z_k:.3f}"
        ds.save_as(str(path), enforce_file_format=True)
    return nz


def synth(
    out_dir: str | Path, cases: int = 10, seed: int = 0, size: int = 64, slices: int = 16
) -> dict[str, int]:
    """Write a folder collection of ``cases`` T1-like brain MRIs (:func:`brain_phantom`,
    ``size`` x ``size`` x ``slices``): ``sub-001/``, ``sub-002/``... alternately hold a NIfTI
    volume ``anat/t1.nii.gz`` (float32 RAS, or int16 stored LPS-flipped, alternately) and a
    DICOM MR series ``dicom/IM-0001.dcm``... (one file per slice) carrying a made-up
    identity (name, ID, birth date, accession number, institution) that ingest must drop.
    Deterministic in ``seed``. Returns counts written: patients, nifti_volumes,
    dicom_series, dicom_files, files (the samples an ingest finds)."""
    from raysuite.data.synth.dicom_writer import Identity

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    counts = {"patients": cases, "nifti_volumes": 0, "dicom_series": 0, "dicom_files": 0}
    for case in range(1, cases + 1):
        volume, spacing = brain_phantom(rng, size, slices)
        patient = out / f"sub-{case:03d}"
        if case % 2 == 1:
            _write_nifti(patient / "anat" / "t1.nii.gz", volume, spacing, as_int16=case % 4 == 3)
            counts["nifti_volumes"] += 1
            continue
        identity = Identity(
            patient_id=f"MRN{int(rng.integers(10**6, 10**7))}",
            patient_name=f"FOLDERTEST^PATIENT{case:03d}",
            birth_date=f"19{int(rng.integers(40, 99))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
            accession=f"MRACC{seed:03d}{case:05d}",
            institution="Synthetic Neuroimaging Institute",
            referring="SYNTH^REFERRER",
        )
        counts["dicom_files"] += _write_mr_series(
            patient / "dicom", volume, spacing, identity, (seed, case)
        )
        counts["dicom_series"] += 1
    counts["files"] = counts["nifti_volumes"] + counts["dicom_files"]
    return counts
