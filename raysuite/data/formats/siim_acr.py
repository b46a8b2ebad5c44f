"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019; seed 004): layout, ingest, preprocessing
(synthetic writer: :mod:`raysuite.data.synth.siim_acr`).

Published layout (stage 1)::

    dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    dicom-images-test/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    train-rle.csv          header "ImageId, EncodedPixels" (note the space)

The DICOMs are 1024x1024 8-bit MONOCHROME2 chest radiographs, modality CR, JPEG baseline
(lossy) Secondary Capture objects with ``ViewPosition`` PA or AP. ``ImageId`` is the
SOPInstanceUID, which is also the file stem. A positive image has one CSV row per
pneumothorax region (the masks are OR-ed; a ``-1`` among region rows adds nothing); a
negative one has a single row ``-1`` (written `` -1``). Masks use the relative
column-major RLE of :mod:`raysuite.data.rle`.

The stage-2 release, ``stage_2_train.csv`` (header ``ImageId,EncodedPixels``), labels the
stage-1 test images too; when both CSVs are present, ``stage_2_train.csv`` is used.

Ingest (one sample per image, or per ImageId the CSV names):

- an image the CSV lists becomes a labelled row: ``labels`` ``["Pneumothorax"]`` and
  ``mask`` ``"rle:<encoding of the OR-ed mask>"``, or ``[]`` and ``None`` when empty;
- a ``dicom-images-test`` image the CSV does not list is ingested *unlabelled*:
  ``source_split`` ``"test"``, ``labels`` ``[]``, ``mask`` None and ``extra.labelled``
  false. ``labels == []`` does not mean normal there: methods must keep only rows with
  ``extra.labelled`` (seed 004 trains on the 10,675 labelled training images only);
- failures: ``missing_file`` (CSV names an absent DICOM), ``no_annotation`` (a
  ``dicom-images-train`` DICOM the CSV does not list), ``malformed_rle`` (any of the
  image's encodings is malformed or runs past the image), ``shape_mismatch`` (the runs
  fit the dataset's usual image size but not this DICOM's), ``bad_csv_row`` (a CSV line
  that does not parse, or has no ImageId), ``duplicate_image`` (a second file with an
  ImageId already seen), and the readers' codes (``truncated``, ``no_pixel_data``,
  ``undecodable_transfer_syntax``, ``not_dicom``...). An image with any bad annotation
  fails whole.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raysuite.data import dicom_codes, intensity, privacy, rle
from raysuite.data.ingest import LayoutError, Ledger, SampleError, read_csv
from raysuite.data.readers import ReadError, confined, read_dicom

NAME = "siim_acr"
LABEL = "Pneumothorax"
TRAIN_DIR = "dicom-images-train"
TEST_DIR = "dicom-images-test"
STAGE1_CSV = "train-rle.csv"
STAGE2_CSV = "stage_2_train.csv"
COLUMNS = ("ImageId", "EncodedPixels")
PUBLISHED_SIZE = 1024
PUBLISHED_SPACING = 0.168  # mm, PixelSpacing of the released radiographs
_OVERRUN = "_overrun"


# --------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """Seed 004 §4.2: each DICOM is converted to an 8-bit PNG and "resized to fit the input
    layer": ``size`` 256 for the U-Nets (Tables 4.2 and 4.4), 224 for the ResNeXt-50
    classifier (Table 4.3, :data:`CLASSIFIER`). Pixels are scaled to [0, 1] by the stored
    bit depth (``/255`` for the 8-bit SIIM images, as loading the PNG does); ImageNet
    mean/std normalisation (fastai's ``imagenet_stats``) belongs to the model input, not
    here. The image is squashed to ``size`` x ``size`` with ``interpolation``; masks always
    use nearest neighbour."""

    size: int = 256
    interpolation: str = "bilinear"  # or "nearest", "bicubic", "area"

    def key(self) -> str:
        return f"siim-s{self.size}-{self.interpolation}"


SEGMENTER = Preprocessing(size=256)
CLASSIFIER = Preprocessing(size=224)


def preprocess(root: Path, row: Mapping[str, Any], prep: Preprocessing) -> np.ndarray:
    """One manifest row -> ``(S, S)`` float32 image in [0, 1], ``S = prep.size`` (seed 004
    §4.2: DICOM -> 8-bit grey levels / 255 -> resized to the network input)."""
    image, meta = read_dicom(Path(root) / str(row["path"]))
    full_scale = float(2 ** (meta.bits or 8) - 1)
    image = np.clip(image / full_scale, 0.0, 1.0).astype(np.float32)
    return np.clip(intensity.resize(image, prep.size, prep.interpolation), 0.0, 1.0).astype(np.float32)


def mask_array(row: Mapping[str, Any]) -> np.ndarray:
    """The row's pneumothorax mask at the stored size: ``(height, width)`` uint8 of 0/1
    (all zero when ``mask`` is None)."""
    height, width = int(row["height"]), int(row["width"])
    ref = row.get("mask")
    if ref is None or (isinstance(ref, float) and math.isnan(ref)):
        return np.zeros((height, width), np.uint8)
    if not str(ref).startswith("rle:"):
        raise ValueError(
            f"sample {row.get('sample_id')!r}: mask {str(ref)[:40]!r} is not 'rle:<counts>'"
        )
    return rle.decode(str(ref)[4:], height, width)


def target_mask(row: Mapping[str, Any], prep: Preprocessing) -> np.ndarray:
    """The row's mask resized like :func:`preprocess` (nearest): ``(S, S)`` uint8 of 0/1."""
    return intensity.resize(mask_array(row), prep.size, "nearest").astype(np.uint8)


# --------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class _Task:
    root: str
    rel: str
    image_id: str
    split: str
    csv: str
    encodings: tuple[str, ...] | None  # None: unlabelled


def annotation_csv(root: Path) -> Path:
    """``stage_2_train.csv`` when present, else ``train-rle.csv`` (LayoutError if neither)."""
    for name in (STAGE2_CSV, STAGE1_CSV):
        if (root / name).is_file():
            return root / name
    raise LayoutError(
        root, f"missing {STAGE1_CSV} (or {STAGE2_CSV}): the SIIM-ACR mask annotations"
    )


def _view_position(path: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["ViewPosition"])
        return dicom_codes.code_string(ds.get("ViewPosition", ""), dicom_codes.VIEW_POSITIONS)
    except Exception:
        return ""


def _ingest_one(task: _Task) -> dict[str, Any]:
    """Decode one DICOM and its encodings into a manifest row (runs in ingest workers).

    A row carrying ``_overrun`` (pixels the runs need) is a mask that does not fit this
    DICOM; :func:`ingest` decides between ``shape_mismatch`` and ``malformed_rle``.
    """
    extents = []
    for text in task.encodings or ():
        try:
            extents.append(rle.extent(text))
        except rle.RLEError as err:
            raise SampleError(
                task.csv, "malformed_rle", f"{task.image_id}: EncodedPixels {err}"
            ) from None
    path = confined(task.root, task.rel)
    try:
        image, meta = read_dicom(path)
    except ReadError:
        raise
    except Exception as err:  # a reader bug must not stop the ingest
        raise ReadError(task.rel, f"unreadable ({type(err).__name__})", "unreadable") from None
    if not np.isfinite(image).all():
        raise ReadError(task.rel, "contains NaN or Inf pixels", "nan_volume")
    height, width = image.shape
    row: dict[str, Any] = {
        "sample_id": task.image_id,
        "patient_key": meta.patient_key or meta.study_key or privacy.salted_key(task.image_id),
        "study": meta.study_key or "",
        "path": task.rel,
        "modality": meta.modality or "CR",
        "height": height,
        "width": width,
        "depth": 1,
        "spacing": list(meta.spacing),
        "labels": [],
        "boxes": [],
        "mask": None,
        "source_split": task.split,
        "extra": {"labelled": task.encodings is not None, "view": _view_position(path)},
    }
    if task.encodings is None:
        return row
    row["extra"]["csv"] = task.csv
    row["extra"]["regions"] = sum(text.strip() != rle.EMPTY for text in task.encodings)
    if max(extents, default=0) > height * width:
        row[_OVERRUN] = max(extents)
        return row
    mask = rle.decode_many(task.encodings, height, width)
    row["extra"]["mask_pixels"] = int(mask.sum())
    if mask.any():
        row["labels"] = [LABEL]
        row["mask"] = "rle:" + rle.encode(mask)
    return row


def _scan_images(root: Path, ledger: Ledger) -> dict[str, tuple[str, str]]:
    """ImageId (file stem) -> (relative path, source split) for every ``.dcm`` under the
    train and test folders; a second file with the same ImageId fails ``duplicate_image``."""
    images: dict[str, tuple[str, str]] = {}
    for split, folder in (("train", TRAIN_DIR), ("test", TEST_DIR)):
        if not (root / folder).is_dir():
            continue
        for path in sorted(
            p for p in (root / folder).rglob("*") if p.suffix.lower() == ".dcm" and p.is_file()
        ):
            rel = path.relative_to(root).as_posix()
            if path.stem in images:
                ledger.fail(
                    path.stem, rel, "duplicate_image", f"ImageId also at {images[path.stem][0]}"
                )
                continue
            images[path.stem] = (rel, split)
    return images


def ingest(root: Path, ledger: Ledger, workers: int = 1) -> None:
    """Add one row per SIIM-ACR image to ``ledger`` (see the module docstring for the
    rules); raises :class:`LayoutError` when ``root`` is not the layout or the CSV lacks
    ``ImageId`` / ``EncodedPixels``."""
    root = Path(root)
    if not (root / TRAIN_DIR).is_dir():
        raise LayoutError(root / TRAIN_DIR, f"missing folder {TRAIN_DIR}/ (SIIM-ACR layout)")
    csv_path = annotation_csv(root)
    bad_lines: list[list[str]] = []
    frame = read_csv(
        csv_path,
        required=COLUMNS,
        dtype=str,
        keep_default_na=False,
        engine="python",
        on_bad_lines=bad_lines.append,  # returns None: the line is skipped and kept here
    )
    csv_name = csv_path.name
    annotations: dict[str, list[str]] = {}
    broken: dict[str, list[str]] = {}
    for image_id, text in zip(frame["ImageId"], frame["EncodedPixels"], strict=True):
        image_id, text = str(image_id).strip(), str(text).strip()
        if not image_id:
            ledger.fail(
                "", csv_name, "bad_csv_row", "a row without ImageId"
            )
            continue
        annotations.setdefault(image_id, []).append(text)
    for fields in bad_lines:
        image_id = str(fields[0]).strip() if fields else ""
        detail = f"line with {len(fields)} fields, {len(COLUMNS)} expected"
        if image_id:
            broken.setdefault(image_id, []).append(detail)
        else:
            ledger.fail("", csv_name, "bad_csv_row", detail)
    images = _scan_images(root, ledger)
    tasks: list[tuple[str, _Task]] = []
    for image_id in sorted(set(images) | set(annotations) | set(broken)):
        if image_id in broken:
            ledger.fail(image_id, csv_name, "bad_csv_row", f"{image_id}: {broken[image_id][0]}")
            continue
        if image_id not in images:
            ledger.fail(
                image_id,
                csv_name,
                "missing_file",
                f"{csv_name} names {image_id}; no {image_id}.dcm under {TRAIN_DIR}/ or {TEST_DIR}/",
            )
            continue
        rel, split = images[image_id]
        encodings = annotations.get(image_id)
        if encodings is None and split == "train":
            ledger.fail(
                image_id, rel, "no_annotation", f"{TRAIN_DIR} image not listed in {csv_name}"
            )
            continue
        task = _Task(
            str(root),
            rel,
            image_id,
            split,
            csv_name,
            tuple(encodings) if encodings is not None else None,
        )
        tasks.append((image_id, task))
    staged = Ledger()
    staged.run(_ingest_one, tasks, workers)
    sizes = Counter((r["height"], r["width"]) for r in staged.rows)
    usual = sizes.most_common(1)[0][0] if sizes else (PUBLISHED_SIZE, PUBLISHED_SIZE)
    for row in staged.rows:
        needed = row.pop(_OVERRUN, None)
        if needed is None:
            ledger.add(row)
            continue
        shape = (row["height"], row["width"])
        if shape != usual and needed <= usual[0] * usual[1]:
            detail = f"mask runs need {needed} pixels, as on a {usual[0]}x{usual[1]} image"
            detail += f"; this DICOM is {shape[0]}x{shape[1]}"
            ledger.fail(row["sample_id"], row["path"], "shape_mismatch", detail)
        else:
            detail = f"{row['sample_id']}: runs end at pixel {needed}"
            detail += f", past the {shape[0]}x{shape[1]} image"
            ledger.fail(row["sample_id"], csv_name, "malformed_rle", detail)
    for error in staged.errors:
        ledger.fail(**error)
