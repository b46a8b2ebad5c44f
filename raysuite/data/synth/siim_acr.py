"""Synthetic SIIM-ACR Pneumothorax: chest phantoms with pneumothorax crescents as
released-style DICOMs and RLE CSVs (:mod:`raysuite.data.formats.siim_acr` describes the
layout and ingests it)."""

from __future__ import annotations

import io
import math
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from raysuite.data import rle
from raysuite.data.formats.siim_acr import (
    PUBLISHED_SIZE,
    PUBLISHED_SPACING,
    STAGE1_CSV,
    STAGE2_CSV,
    TEST_DIR,
    TRAIN_DIR,
)

_UID_ROOT = "1.2.276.0.7230010.3.1"  # the UID root of the released files


def phantom(
    rng: np.random.Generator, size: int, sides: tuple[str, ...] = ()
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A PA chest radiograph phantom, ``(size, size)`` uint8 MONOCHROME2, and one
    ``(size, size)`` bool pneumothorax mask per side in ``sides`` ("right"/"left" of the
    patient, i.e. image left/right).

    Dark air around a soft-tissue body, darker lungs with vessel markings and ribs, a
    bright heart and spine. A pneumothorax is an apical-lateral crescent of the lung that
    is darker still and has no markings, bounded by a thin bright visceral pleural line:
    the collapsed lung is a smaller ellipse pulled toward the hilum. The mask is exactly
    the darkened crescent.
    """
    v, u = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size  # v down, u right
    px = size / 128.0

    def ellipse(cu: float, cv: float, au: float, av: float) -> np.ndarray:
        return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 < 1.0

    jitter = rng.normal(0, 1, 12)
    body = ellipse(0.5, 0.58, 0.46 + 0.01 * jitter[0], 0.52)
    j = jitter
    lungs = {  # centre u, centre v, semi-axes u and v, direction toward the midline
        "right": (0.31 + 0.01 * j[1], 0.47, 0.135 + 0.008 * j[2], 0.29 + 0.01 * j[3], 1.0),
        "left": (0.69 + 0.01 * j[4], 0.48, 0.125 + 0.008 * j[5], 0.28 + 0.01 * j[6], -1.0),
    }
    image = np.full((size, size), 14.0, np.float32)
    image[body] = 150 + 6 * jitter[7]
    noise = rng.normal(0, 1, (size, size)).astype(np.float32)
    markings = ndimage.gaussian_filter(noise, 0.8 * px) - ndimage.gaussian_filter(noise, 2.5 * px)
    markings *= 14 / (markings.std() + 1e-6)
    lung_level = 82 + 5 * jitter[8]
    inside = {name: ellipse(cu, cv, au, av) for name, (cu, cv, au, av, _) in lungs.items()}
    for mask in inside.values():
        image[mask] = lung_level + markings[mask]
    heart = ellipse(0.56, 0.68, 0.15, 0.13)
    spine = (np.abs(u - 0.5) < 0.045) & body
    solid = heart | spine
    image[heart] = 185 + 5 * jitter[9]
    image[spine] = 200
    regions = []
    for side in sides:
        cu, cv, au, av, medial = lungs[side]
        f = float(rng.uniform(0.65, 0.88))  # fraction of the lung left inflated
        collapsed = ellipse(cu + medial * (1 - f) * au, cv + (1 - f) * av, f * au, f * av)
        region = inside[side] & ~collapsed & ~solid
        image[region] = 36 + 3 * jitter[10]
        pleura = ndimage.binary_dilation(region, iterations=max(1, round(px))) & collapsed & ~solid
        image[pleura] = lung_level + 45
        regions.append(region)
    thorax = (inside["right"] | inside["left"]) & ~solid
    for k in range(10):  # posterior ribs: gently curved bright bands
        centre = 0.2 + 0.075 * k + 0.18 * (u - 0.5) ** 2
        image[thorax & (np.abs(v - centre) < 0.012 + 0.002 * k)] += 12
    image += rng.normal(0, 2.5, (size, size)).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), regions


def _uids(number: int, rng: np.random.Generator) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs shaped like the released ones."""
    stamp = 1517875000 + int(rng.integers(100, 400))
    counter = int(rng.integers(100002, 999990))
    base = f"8323329.{number}.{stamp}"
    return (
        f"{_UID_ROOT}.2.{base}.{counter - 1}",
        f"{_UID_ROOT}.3.{base}.{counter - 2}",
        f"{_UID_ROOT}.4.{base}.{counter}",
    )


def _write_siim_dicom(
    path: Path,
    pixels: np.ndarray,
    identity: Any,
    uids: tuple[str, str, str],
    view: str,
    sex: str,
    age: int,
    jpeg: bool,
) -> None:
    """A released-style DICOM: Secondary Capture, CR, 8-bit, JPEG baseline when ``jpeg``."""
    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, JPEGBaseline8Bit

    from raysuite.data.synth.dicom_writer import write_dicom

    study, series, sop = uids
    spacing = PUBLISHED_SPACING * PUBLISHED_SIZE / pixels.shape[0]
    write_dicom(
        path,
        pixels,
        identity,
        study_uid=study,
        modality="CR",
        spacing=(spacing, spacing),
        bits_stored=8,
    )
    ds = pydicom.dcmread(str(path))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.SeriesInstanceUID = series
    ds.StudyDate, ds.StudyTime = "19010101", "000000.00"
    ds.ConversionType = "WSD"
    ds.SeriesDescription = f"view: {view}"
    ds.ViewPosition = view
    ds.PatientSex = sex
    with warnings.catch_warnings():  # the release writes ages as bare numbers ("38"), not "038Y"
        warnings.simplefilter("ignore", UserWarning)
        ds.PatientAge = str(age)
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber, ds.InstanceNumber = "1", "1"
    if jpeg:
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, "JPEG", quality=95)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.save_as(str(path), enforce_file_format=True)


def synth(
    out_dir: str | Path,
    cases: int = 10,
    seed: int = 0,
    size: int = 128,
    stage: int = 1,
    jpeg: bool = True,
    positive_fraction: float = 1 / 3,
) -> dict[str, int]:
    """Write a SIIM-ACR-layout dataset of ``cases`` training images (``size`` x ``size``;
    the release is 1024) and ``max(1, cases // 4)`` test images.

    A minority of the training images, ``ceil(cases * positive_fraction)`` (the release has
    22 % positives, seed 004 §4.2), show a pneumothorax; the first positive has one
    in each lung (two CSV rows). Every fourth image is a second study of the previous
    image's patient. Stage 1 writes ``train-rle.csv`` (``"ImageId, EncodedPixels"``, values
    after ``", "``) and leaves the test images unlabelled; ``stage=2`` writes
    ``stage_2_train.csv`` (``ImageId,EncodedPixels``) labelling the test images too. DICOMs
    carry made-up patient identity (name, ID, birth date, accession, institution).
    Returns counts written: train, test, positive, regions, patients, csv_rows.
    """
    from raysuite.data.synth.dicom_writer import Identity

    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    n_test = max(1, cases // 4)
    positive = rng.permutation(cases) < math.ceil(cases * positive_fraction)
    first_positive = int(np.argmax(positive)) if positive.any() else -1
    lines: list[tuple[str, str]] = []
    identity = None
    patients = 0
    counts = {"train": 0, "test": 0, "positive": 0, "regions": 0}
    for index in range(cases + n_test):
        split = "train" if index < cases else "test"
        if identity is None or split == "test" or index % 4 != 1:
            patients += 1
            identity = Identity(
                patient_id=str(uuid.UUID(bytes=rng.bytes(16), version=4)),
                patient_name=f"PTXSYNTH^PATIENT{patients:04d}",
                birth_date=f"19{int(rng.integers(30, 99))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
                accession=f"PTXACC{patients:06d}",
                institution="Synthetic Chest Clinic",
                referring="SYNTH^REFERRER",
                other_ids=f"PTXMRN{patients:07d}",
            )
        is_positive = bool(positive[index]) if split == "train" else index % 2 == 0
        if not is_positive:
            sides: tuple[str, ...] = ()
        elif index == first_positive:
            sides = ("right", "left")
        else:
            sides = (("right", "left")[int(rng.integers(0, 2))],)
        pixels, regions = phantom(rng, size, sides)
        uids = _uids(1000 + index, rng)
        view = "AP" if rng.random() < 0.4 else "PA"
        folder = TRAIN_DIR if split == "train" else TEST_DIR
        path = out / folder / uids[0] / uids[1] / f"{uids[2]}.dcm"
        sex = "MF"[int(rng.integers(0, 2))]
        _write_siim_dicom(path, pixels, identity, uids, view, sex, int(rng.integers(18, 90)), jpeg)
        counts[split] += 1
        if split == "test" and stage == 1:
            continue
        counts["positive"] += bool(regions)
        counts["regions"] += len(regions)
        lines.extend((uids[2], rle.encode(region)) for region in regions)
        if not regions:
            lines.append((uids[2], rle.EMPTY))
    out.mkdir(parents=True, exist_ok=True)
    if stage == 1:
        text = "ImageId, EncodedPixels\n" + "".join(f"{i}, {e}\n" for i, e in lines)
    else:
        text = "ImageId,EncodedPixels\n" + "".join(f"{i},{e}\n" for i, e in lines)
    (out / (STAGE1_CSV if stage == 1 else STAGE2_CSV)).write_text(text)
    return {**counts, "patients": patients, "csv_rows": len(lines)}
