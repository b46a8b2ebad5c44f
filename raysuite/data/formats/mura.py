"""MURA v1.1 (seed 002, transfer to musculoskeletal radiographs): layout, ingest,
preprocessing (synthetic writer: :mod:`raysuite.data.synth.mura`).

Published layout::

    MURA-v1.1/train_image_paths.csv      no header, one column:
                                         MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png
    MURA-v1.1/train_labeled_studies.csv  no header, two columns: study folder (trailing /), 0/1
    MURA-v1.1/valid_image_paths.csv      (the same for the validation split)
    MURA-v1.1/valid_labeled_studies.csv
    MURA-v1.1/{train,valid}/XR_<PART>/patient<NNNNN>/study<N>_{positive,negative}/image<N>.png

ROOT is the folder holding ``MURA-v1.1/`` or ``MURA-v1.1/`` itself (the CSV paths start
with ``MURA-v1.1/`` either way; manifest paths are relative to ROOT). A sample is an image,
labelled by its study: ``["abnormal"]`` or ``[]``. PNGs are 8-bit of varying size, a few
RGB (converted to luminance by the reader). The folder names carry MURA's pseudonymous
patient number, so ``path`` and ``sample_id`` contain it; ``patient_key`` and ``study`` are
salted keys.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raysuite.data import intensity, privacy
from raysuite.data.ingest import LayoutError, Ledger
from raysuite.data.readers import confined, read_png

NAME = "mura"

FOLDER = "MURA-v1.1"
BODY_PARTS = (
    "XR_ELBOW",
    "XR_FINGER",
    "XR_FOREARM",
    "XR_HAND",
    "XR_HUMERUS",
    "XR_SHOULDER",
    "XR_WRIST",
)
SPLITS = ("train", "valid")
ABNORMAL = "abnormal"

_IMAGE_RE = re.compile(r"^(train|valid)/(XR_[A-Z]+)/(patient\d+)/([^/]+)/([^/]+\.png)$")


@dataclass(frozen=True)
class Preprocessing:
    """Seed 002 sections 3.1.10 and 4.2.4.3: divide the 8-bit pixels by ``scale`` = 255 to
    [0, 1], zero-pad images shorter than ``size`` = 224 on a side ("some images do not
    exceed 224 pixels in length or width"), input ``size`` x ``size``. For pretraining the
    seed takes random ``crop`` = 448 clips resized to 224 (:func:`random_crop`)."""

    size: int = 224
    crop: int = 448
    scale: float = 255.0

    def key(self) -> str:
        return f"mura-s{self.size}-c{self.crop}-d{self.scale:g}"


# --------------------------------------------------------------------------- layout


def _base(root: Path) -> tuple[Path, str]:
    """The ``MURA-v1.1`` folder and the prefix that makes a path under it relative to ROOT."""
    if (root / FOLDER).is_dir():
        return root / FOLDER, f"{FOLDER}/"
    if any((root / f"{s}_image_paths.csv").is_file() for s in SPLITS):
        return root, ""
    raise LayoutError(
        root / FOLDER,
        "folder not found (nor train_image_paths.csv directly under ROOT): not a MURA-v1.1 root",
    )


def _csvs(base: Path) -> dict[str, tuple[Path, Path]]:
    """Per split present, its image-paths and labeled-studies CSVs (both, or LayoutError)."""
    found = {}
    for split in SPLITS:
        paths, studies = base / f"{split}_image_paths.csv", base / f"{split}_labeled_studies.csv"
        if paths.is_file() != studies.is_file():
            missing = studies if paths.is_file() else paths
            raise LayoutError(missing, "required CSV not found")
        if paths.is_file():
            found[split] = (paths, studies)
    if not found:
        raise LayoutError(base / "train_image_paths.csv", "required CSV not found")
    return found


def _rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """A header-less CSV as ``(line number, stripped fields)``, blank lines skipped.

    LayoutError when the file cannot be read or its first row has fewer than
    ``len(columns)`` fields (the missing column is named).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(i, [c.strip() for c in fields]) for i, fields in enumerate(csv.reader(f), 1)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LayoutError(path, f"cannot parse CSV ({err})") from None
    rows = [(i, fields) for i, fields in rows if any(fields)]
    if rows and len(rows[0][1]) < len(columns):
        missing = list(columns[len(rows[0][1]) :])
        raise LayoutError(
            path, f"missing required column(s) {missing}; the header-less CSV needs {list(columns)}"
        )
    return rows


def _relative(path: str) -> str:
    """A CSV path relative to ``MURA-v1.1/``."""
    return path.strip().removeprefix(f"{FOLDER}/")


# --------------------------------------------------------------------------- ingest


def ingest(root: Path, ledger: Ledger, workers: int = 1) -> None:
    """Add every image the ``*_image_paths.csv`` files name, and every PNG under ``train/``
    and ``valid/`` they do not, to ``ledger``: a row labelled by its study, or an error row
    (``bad_csv_row``, ``missing_file``, ``no_annotation`` or the reader's code).

    Raises :class:`LayoutError` when ROOT is not the layout or a CSV lacks a column.
    """
    root = Path(root)
    base, prefix = _base(root)
    csvs = _csvs(base)

    # study folder (relative to MURA-v1.1/, "/"-ended) -> its label 0/1, or what is wrong
    study_label: dict[str, int | str] = {}
    for _, studies_csv in csvs.values():
        for line, fields in _rows(studies_csv, ("study folder", "label")):
            study = _relative(fields[0]).rstrip("/") + "/"
            value: int | str
            if len(fields) > 2 and any(fields[2:]):
                value = f"{studies_csv.name} line {line}: {len(fields)} fields, 2 expected"
            elif fields[1] not in ("0", "1"):
                value = f"{studies_csv.name} line {line}: the label is not 0 or 1"
            else:
                value = int(fields[1])
            previous = study_label.get(study)
            if previous is not None and previous != value:
                value = (
                    previous
                    if isinstance(previous, str)
                    else f"{studies_csv.name} line {line}: conflicting labels for the study"
                )
            study_label[study] = value

    listed: set[str] = set()
    keys: dict[str, str] = {}
    items: list[tuple[str, dict[str, Any]]] = []
    for split, (paths_csv, _) in csvs.items():
        for line, fields in _rows(paths_csv, ("image path",)):
            rel = _relative(fields[0])
            sid = rel.removesuffix(".png")
            where = f"{paths_csv.name} line {line}"
            if rel in listed:
                ledger.fail(
                    f"{sid}#line{line}", prefix + rel, "bad_csv_row", f"{where}: image listed twice"
                )
                continue
            listed.add(rel)
            match = _IMAGE_RE.match(rel)
            if len(fields) > 1 and any(fields[1:]):
                ledger.fail(
                    sid, prefix + rel, "bad_csv_row", f"{where}: {len(fields)} fields, 1 expected"
                )
                continue
            if not match or match.group(2) not in BODY_PARTS or match.group(1) != split:
                ledger.fail(
                    sid,
                    prefix + rel,
                    "bad_csv_row",
                    f"{where}: not a {split}/XR_<PART>/patient<N>/<study>/<image>.png path",
                )
                continue
            _, part, patient, study, _ = match.groups()
            label = study_label.get(rel.rsplit("/", 1)[0] + "/")
            if label is None:
                ledger.fail(
                    sid, prefix + rel, "no_annotation", f"study not in {split}_labeled_studies.csv"
                )
            elif isinstance(label, str):
                ledger.fail(sid, prefix + rel, "bad_csv_row", label)
            elif not (base / rel).is_file():
                ledger.fail(
                    sid, prefix + rel, "missing_file", f"{where} names an image that is not on disk"
                )
            else:
                if patient not in keys:
                    keys[patient] = privacy.salted_key(patient)
                row = {
                    "sample_id": sid,
                    "patient_key": keys[patient],
                    "study": privacy.salted_key(f"{part}/{patient}/{study}", "s"),
                    "path": prefix + rel,
                    "modality": "DX",
                    "labels": [ABNORMAL] if label else [],
                    "source_split": split,
                    "extra": {"body_part": part, "study": study},
                }
                items.append((sid, {"root": str(root), "row": row}))

    for split in SPLITS:
        if not (base / split).is_dir():
            continue
        for file in sorted((base / split).rglob("*.png")):
            rel = file.relative_to(base).as_posix()
            if rel not in listed and not file.name.startswith("._"):
                ledger.fail(
                    rel.removesuffix(".png"),
                    prefix + rel,
                    "no_annotation",
                    f"image not listed in {split}_image_paths.csv",
                )
    ledger.run(_read_sample, items, workers)


def _read_sample(item: dict[str, Any]) -> dict[str, Any]:
    """Decode one image (runs in a worker process)."""
    row = item["row"]
    image, _ = read_png(confined(item["root"], row["path"]))
    height, width = image.shape
    return {**row, "height": height, "width": width, "depth": 1, "spacing": []}


# --------------------------------------------------------------------- preprocessing


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad each side shorter than ``size`` symmetrically up to ``size``."""
    pad = [
        ((size - n) // 2, size - n - (size - n) // 2) if n < size else (0, 0) for n in image.shape
    ]
    return np.pad(image, pad) if any(p != (0, 0) for p in pad) else image


def load(root: Path, row: Mapping[str, Any], prep: Preprocessing) -> np.ndarray:
    """The stored image divided by ``prep.scale`` (65535 for a 16-bit PNG) and zero-padded
    to at least ``prep.size`` on each side: float32 ``(max(H, size), max(W, size))`` in [0, 1]."""
    image, meta = read_png(Path(root) / str(row["path"]))
    scale = prep.scale if meta.bits <= 8 else 65535.0
    return _pad_to(np.clip(image / scale, 0.0, 1.0).astype(np.float32), prep.size)


def preprocess(root: Path, row: Mapping[str, Any], prep: Preprocessing) -> np.ndarray:
    """One manifest row -> the classifier input, float32 ``(prep.size, prep.size)`` in [0, 1].

    Seed 002 section 4.2.4.3: pixels / 255, input size 224 x 224 (section 3.1.10: zero
    padding of images smaller than 224, then the image is resized to 224 x 224).
    """
    image = load(root, row, prep)
    return np.clip(intensity.resize(image, (prep.size, prep.size)), 0.0, 1.0)


def random_crop(image: np.ndarray, prep: Preprocessing, rng: np.random.Generator) -> np.ndarray:
    """Seed 002 section 3.1.10 pretraining view: a random square clip of side
    ``min(prep.crop, H, W)`` of a :func:`load`-ed image, resized to ``(prep.size, prep.size)``."""
    side = min(prep.crop, *image.shape)
    y = int(rng.integers(0, image.shape[0] - side + 1))
    x = int(rng.integers(0, image.shape[1] - side + 1))
    return np.clip(intensity.resize(image[y : y + side, x : x + side], prep.size), 0.0, 1.0)


def target(row: Mapping[str, Any]) -> float:
    """1.0 for an image of an abnormal study, 0.0 for a normal one."""
    labels = row.get("labels")
    return 1.0 if labels is not None and ABNORMAL in list(labels) else 0.0
