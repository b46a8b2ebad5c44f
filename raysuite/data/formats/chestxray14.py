"""NIH ChestX-ray14 (seed 003, weak localisation): layout, ingest, preprocessing (synthetic
writer: :mod:`raysuite.data.synth.chestxray14`).

Published layout (NIH Box / Kaggle mirror)::

    Data_Entry_2017.csv            one row per image: labels, patient, follow-up, view...
    BBox_List_2017.csv             984 boxes on 880 images, 8 classes, 1024 x 1024 pixels
    train_val_list.txt             image names of the official patient-wise split
    test_list.txt
    images/00000001_000.png        1024 x 1024 8-bit grayscale PNG (a few are RGBA)
    images_001/images/...          ... or the twelve archive folders images_001 .. images_012

``Data_Entry_2017.csv`` has the header ``Image Index,Finding Labels,Follow-up #,Patient ID,
Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],
OriginalImagePixelSpacing[x,y],``: the bracketed names split into two columns each and the
trailing comma adds an unnamed one. ``Finding Labels`` joins findings with ``|``;
``No Finding`` is a normal image (labels ``[]``). ``BBox_List_2017.csv``'s header is
``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the box is read by position (columns 2..5
are x, y, w, h in the 1024 x 1024 pixel space), and the file calls Infiltration
``Infiltrate``.

Ingest keys patients by the salted ``Patient ID`` and keeps neither age nor sex. Boxes are
stored in the pixels of the image on disk (scaled by ``width / 1024``, so a mirror of the
dataset resized to 512 still gets correct boxes). The published file names embed the
(already pseudonymous) NIH patient number, so ``path`` and ``sample_id`` carry it; no other
column does.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysuite.data import dicom_codes, intensity, privacy
from raysuite.data.ingest import LayoutError, Ledger, SampleError, read_csv
from raysuite.data.readers import confined, read_png

NAME = "chestxray14"

CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)  # fmt: skip
BOX_CLASSES = CLASSES[:8]  # the 8 classes of BBox_List_2017.csv
NO_FINDING = "No Finding"
BOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}  # BBox_List_2017.csv's spelling
BOX_SPACE = 1024  # BBox_List_2017.csv coordinates refer to the published 1024 x 1024 PNGs

DATA_ENTRY = "Data_Entry_2017.csv"
DATA_ENTRY_ALTERNATIVES = (DATA_ENTRY, "Data_Entry_2017_v2020.csv")
BBOX_LIST = "BBox_List_2017.csv"
SPLIT_LISTS = {"train_val_list.txt": "train", "test_list.txt": "test"}
ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
BOX_COLUMNS = ("Image Index", "Finding Label")

# Seed 003, section 4 ("Experiments"): 5-fold cross-validation of the annotated images;
# 80 % of them train (the fold's training part), 20 % evaluate; the unannotated images join
# training at 0 % or 20 % (about 20K images, drawn at random).
FOLDS = 5
ANNOTATED_TRAIN_FRACTION = 0.8
UNANNOTATED_FRACTIONS = (0.0, 0.2)

_NAME_RE = re.compile(r"^(\d{8})_(\d{3})\.png$")
_BOX_TOLERANCE = 0.5  # pixels of BOX_SPACE a box may overhang the border (then clipped)


@dataclass(frozen=True)
class Preprocessing:
    """Seed 003, section 4 ("Dataset", "Training Details"): the 1024 x 1024 images are resized
    to ``size`` = 512 and the patch grid is ``grid`` x ``grid`` with P = 20.

    :func:`preprocess` returns intensities in [0, 1] (8-bit / 255); the seed feeds the network
    [-1, 1] (``model_range``), which :func:`to_model_range` applies on the fly.
    """

    size: int = 512
    grid: int = 20
    model_range: tuple[float, float] = (-1.0, 1.0)

    def key(self) -> str:
        return f"cxr14-s{self.size}-p{self.grid}-r{self.model_range[0]:g},{self.model_range[1]:g}"


# --------------------------------------------------------------------------- ingest


def _entry_csv(root: Path) -> Path:
    for name in DATA_ENTRY_ALTERNATIVES:
        if (root / name).is_file():
            return root / name
    raise LayoutError(root / DATA_ENTRY, "required CSV not found: not a ChestX-ray14 root")


def _image_dirs(root: Path) -> list[Path]:
    dirs = [root / "images"] if (root / "images").is_dir() else []
    dirs += sorted(p for p in root.glob("images_*/images") if p.is_dir())
    if not dirs:
        raise LayoutError(
            root / "images", "folder not found (nor images_001/images/ ... images_012/images/)"
        )
    return dirs


def _read(path: Path, required: Sequence[str]) -> tuple[pd.DataFrame, list[list[str]]]:
    """A CSV as strings; rows with more fields than the header are returned apart (unless
    the extra fields are empty), so that one malformed row fails one sample only."""
    extra: list[list[str]] = []
    try:
        with open(path, newline="") as f:
            width = len(next(csv.reader(f), []))
    except (OSError, UnicodeDecodeError, csv.Error):
        width = 0  # read_csv reports the file

    def bad_line(fields: list[str]) -> list[str] | None:
        if width and not any(f.strip() for f in fields[width:]):
            return fields[:width]
        extra.append(fields)
        return None

    frame = read_csv(
        path,
        required=required,
        dtype=str,
        keep_default_na=False,
        engine="python",
        on_bad_lines=bad_line,
    )
    return frame, extra


def _text(value: Any) -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else str(value).strip()
    )


def _number(value: Any) -> float | None:
    try:
        x = float(_text(value))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _column_after(columns: Sequence[str], prefix: str) -> tuple[str, str] | None:
    """The two columns a bracketed header such as ``OriginalImage[Width,Height]`` became."""
    for i, name in enumerate(columns[:-1]):
        if name.startswith(prefix):
            return name, columns[i + 1]
    return None


def _parse_entry(rec: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """One Data_Entry row -> parsed fields; ValueError names what is malformed."""
    name = _text(rec["Image Index"])
    match = _NAME_RE.match(name)
    if not match:
        raise ValueError("Image Index is not of the form 00000001_000.png")
    findings = [f.strip() for f in _text(rec["Finding Labels"]).split("|")]
    if findings == [NO_FINDING]:
        labels: list[str] = []
    else:
        if any(f not in CLASSES for f in findings):
            raise ValueError(f"Finding Labels names a finding that is neither {NO_FINDING!r} nor a ChestX-ray14 class")
        labels = sorted(set(findings), key=CLASSES.index)
    patient = _text(rec["Patient ID"])
    if not patient.isdigit() or int(patient) != int(match.group(1)):
        raise ValueError("Patient ID is not the number the image name starts with")
    follow = _number(rec.get("Follow-up #"))
    extra: dict[str, Any] = {
        "follow_up": int(follow) if follow is not None else int(match.group(2)),
        "view_position": dicom_codes.code_string(_text(rec.get("View Position")), dicom_codes.VIEW_POSITIONS),
    }
    size_cols = _column_after(columns, "OriginalImage[")
    spacing_cols = _column_after(columns, "OriginalImagePixelSpacing[")
    size = [_number(rec.get(c)) for c in size_cols] if size_cols else [None, None]
    spacing = [_number(rec.get(c)) for c in spacing_cols] if spacing_cols else [None, None]
    original = None
    if all(v is not None and v > 0 for v in size + spacing):
        original = {
            "width": size[0],
            "height": size[1],
            "spacing_x": spacing[0],
            "spacing_y": spacing[1],
        }
        extra["original_size"] = [int(v) for v in size if v is not None]  # both set (above)
    return {
        "labels": labels,
        "patient": f"{int(patient):08d}",
        "extra": extra,
        "original": original,
    }


def _parse_box(rec: Sequence[Any]) -> tuple[str, float, float, float, float]:
    label = BOX_LABEL_ALIASES.get(_text(rec[1]), _text(rec[1]))
    if label not in CLASSES:
        raise ValueError("Finding Label is not a ChestX-ray14 box class")
    xywh = [_number(v) for v in rec[2:6]]
    if len(xywh) < 4 or any(v is None for v in xywh):
        raise ValueError("the box is not four numbers")
    x, y, w, h = (float(v) for v in xywh if v is not None)  # none is (above)
    if w <= 0 or h <= 0:
        raise ValueError(f"box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] has no area")
    return label, x, y, w, h


def _sample_id(name: str) -> str:
    return name[: -len(".png")] if name.endswith(".png") else name


def ingest(root: Path, ledger: Ledger, workers: int = 1) -> None:
    """Add every image named by ``Data_Entry_2017.csv``, ``BBox_List_2017.csv`` or found in
    the image folders to ``ledger``: one row each, or one error row (``bad_csv_row``,
    ``missing_file``, ``no_annotation``, ``box_outside_image``, ``duplicate_image`` for a
    second file of one name in another image folder, or the reader's code).

    Raises :class:`LayoutError` when ``root`` lacks ``Data_Entry_2017.csv`` or an image
    folder, or a CSV lacks a required column.
    """
    root = Path(root)
    entry_path = _entry_csv(root)
    image_dirs = _image_dirs(root)
    entries, entry_extra = _read(entry_path, ENTRY_COLUMNS)
    bbox_path = root / BBOX_LIST
    boxes_frame, box_extra = _read(bbox_path, BOX_COLUMNS) if bbox_path.is_file() else (None, [])
    if boxes_frame is not None and boxes_frame.shape[1] < 6:
        raise LayoutError(
            bbox_path,
            f"needs 6 columns (Image Index, Finding Label, x, y, w, h); found {list(boxes_frame.columns)}",
        )

    on_disk: dict[str, str] = {}
    duplicates: list[str] = []
    for folder in image_dirs:
        for file in sorted(folder.glob("*.png")):
            if file.name.startswith("._"):
                continue
            rel = file.relative_to(root).as_posix()
            if file.name in on_disk:
                duplicates.append(rel)
            else:
                on_disk[file.name] = rel

    parsed: dict[str, dict[str, Any]] = {}
    bad: dict[str, str] = {}  # image name -> why its annotation is malformed
    columns = list(entries.columns)
    for i, rec in enumerate(entries.to_dict("records")):
        name = _text(rec["Image Index"]) or f"{entry_path.name}:line{i + 2}"
        if name in parsed or name in bad:
            bad[name] = f"{entry_path.name} lists the image twice"
            parsed.pop(name, None)
            continue
        try:
            parsed[name] = _parse_entry(rec, columns)
        except ValueError as err:
            bad[name] = f"{entry_path.name} line {i + 2}: {err}"
    for k, fields in enumerate(entry_extra):
        name = fields[0].strip() if fields and fields[0].strip() else f"{entry_path.name}:extra{k}"
        parsed.pop(name, None)
        bad[name] = f"{entry_path.name}: row has {len(fields)} fields, the header {len(columns)}"

    boxes: dict[str, list[tuple[str, float, float, float, float]]] = {}
    bad_boxes: dict[str, str] = {}
    rows = boxes_frame.itertuples(index=False, name=None) if boxes_frame is not None else ()
    for i, rec in enumerate(rows):
        name = _text(rec[0]) or f"{BBOX_LIST}:line{i + 2}"
        try:
            boxes.setdefault(name, []).append(_parse_box(rec))
        except ValueError as err:
            bad_boxes[name] = f"{BBOX_LIST} line {i + 2}: {err}"
    for k, fields in enumerate(box_extra):
        name = fields[0].strip() if fields and fields[0].strip() else f"{BBOX_LIST}:extra{k}"
        bad_boxes[name] = f"{BBOX_LIST}: row has {len(fields)} fields"

    split_of: dict[str, str] = {}
    for list_name, split in SPLIT_LISTS.items():
        if (root / list_name).is_file():
            for line in (root / list_name).read_text().splitlines():
                if line.strip():
                    split_of[line.strip()] = split

    keys: dict[str, str] = {}
    items: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(set(parsed) | set(bad) | set(boxes) | set(bad_boxes) | set(on_disk)):
        sid = _sample_id(name)
        rel = on_disk.get(name, "")
        if name in bad:
            ledger.fail(sid, rel or name, "bad_csv_row", bad[name])
        elif name not in parsed:
            if rel:
                ledger.fail(sid, rel, "no_annotation", f"image not listed in {entry_path.name}")
            else:
                ledger.fail(
                    sid, name, "missing_file", f"{BBOX_LIST} names an image that is not on disk"
                )
        elif not rel:
            ledger.fail(
                sid, name, "missing_file", f"{entry_path.name} names an image that is not on disk"
            )
        elif name in bad_boxes:
            ledger.fail(sid, rel, "bad_csv_row", bad_boxes[name])
        else:
            entry = parsed[name]
            if entry["patient"] not in keys:
                keys[entry["patient"]] = privacy.salted_key(entry["patient"])
            item = {
                "root": str(root),
                "rel": rel,
                "row": {
                    "sample_id": sid,
                    "patient_key": keys[entry["patient"]],
                    "study": privacy.salted_key(sid, "s"),
                    "path": rel,
                    "modality": "DX",
                    "labels": entry["labels"],
                    "source_split": split_of.get(name, ""),
                    "extra": entry["extra"],
                },
                "original": entry["original"],
                "boxes": boxes.get(name, []),
            }
            items.append((sid, item))
    for rel in duplicates:
        ledger.fail(
            _sample_id(Path(rel).name),
            rel,
            "duplicate_image",
            "a second image of this name in another image folder (the first is ingested)",
        )
    ledger.run(_read_sample, items, workers)


def _read_sample(item: dict[str, Any]) -> dict[str, Any]:
    """Decode one image and place its boxes in stored pixels (runs in a worker process)."""
    rel = item["rel"]
    image, _ = read_png(confined(item["root"], rel))
    height, width = image.shape
    sx, sy = width / BOX_SPACE, height / BOX_SPACE
    boxes = []
    for label, x, y, w, h in item["boxes"]:
        lo, hi = -_BOX_TOLERANCE, BOX_SPACE + _BOX_TOLERANCE
        if x < lo or y < lo or x + w > hi or y + h > hi:
            raise SampleError(
                rel, "box_outside_image",
                f"{label} box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] leaves the {BOX_SPACE}x{BOX_SPACE} image",
            )  # fmt: skip
        boxes.append(
            {
                "label": label,
                "x_min": max(0.0, x) * sx,
                "y_min": max(0.0, y) * sy,
                "x_max": min(float(BOX_SPACE), x + w) * sx,
                "y_max": min(float(BOX_SPACE), y + h) * sy,
                "readers": 1,
            }
        )
    original = item["original"]
    spacing = []
    if original is not None:  # the PNG is the original image resampled to (height, width)
        spacing = [
            original["spacing_y"] * original["height"] / height,
            original["spacing_x"] * original["width"] / width,
        ]
    return {
        **item["row"],
        "height": height,
        "width": width,
        "depth": 1,
        "spacing": spacing,
        "boxes": boxes,
    }


# --------------------------------------------------------------------- preprocessing


def preprocess(root: Path, row: Mapping[str, Any], prep: Preprocessing) -> np.ndarray:
    """One manifest row -> the training image, float32 ``(prep.size, prep.size)`` in [0, 1].

    Seed 003 section 4: the 1024 x 1024 PNG (8-bit, divided by 255; 16-bit by 65535) is
    resized to 512 x 512. Boxes follow with :func:`scaled_boxes`.
    """
    image, meta = read_png(Path(root) / str(row["path"]))
    peak = 255.0 if meta.bits <= 8 else 65535.0
    image = np.clip(image / peak, 0.0, 1.0)
    return np.clip(intensity.resize(image, (prep.size, prep.size)), 0.0, 1.0).astype(np.float32)


def to_model_range(image: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """[0, 1] -> ``prep.model_range`` ([-1, 1] in seed 003 section 4), same shape."""
    lo, hi = prep.model_range
    return (image * (hi - lo) + lo).astype(np.float32)


def _boxes(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    value = row.get("boxes")
    return [] if value is None else list(value)


def scaled_boxes(row: Mapping[str, Any], size: int) -> tuple[np.ndarray, list[str]]:
    """The row's boxes in the pixels of the ``size`` x ``size`` preprocessed image:
    ``(N, 4)`` float32 ``x_min, y_min, x_max, y_max`` and the N labels."""
    sx, sy = size / float(row["width"]), size / float(row["height"])
    boxes = _boxes(row)
    xyxy = np.asarray(
        [[b["x_min"] * sx, b["y_min"] * sy, b["x_max"] * sx, b["y_max"] * sy] for b in boxes],
        np.float32,
    ).reshape(-1, 4)
    return xyxy, [str(b["label"]) for b in boxes]


def targets(row: Mapping[str, Any], prep: Preprocessing) -> dict[str, np.ndarray]:
    """The targets of seed 003 section 3 for one row, K = 14 classes, P = ``prep.grid``:

    ``labels`` (K,) float32, y^k = 1 when finding k is present; ``annotated`` (K,) float32,
    a^k = 1 when class k has a box; ``patches`` (K, P, P) float32, 1 on the patches of the
    P x P grid that a box of class k overlaps (its b^k), zero for unannotated classes.
    """
    k, p = len(CLASSES), prep.grid
    labels = np.zeros(k, np.float32)
    names = row.get("labels")
    for name in names if names is not None else []:
        labels[CLASSES.index(str(name))] = 1.0
    annotated = np.zeros(k, np.float32)
    patches = np.zeros((k, p, p), np.float32)
    xyxy, names = scaled_boxes(row, p) if len(_boxes(row)) else (np.zeros((0, 4), np.float32), [])
    for (x0, y0, x1, y1), name in zip(xyxy, names, strict=True):
        c = CLASSES.index(name)
        annotated[c] = 1.0
        cols = slice(int(np.floor(x0)), max(int(np.ceil(x1)), int(np.floor(x0)) + 1))
        rows_ = slice(int(np.floor(y0)), max(int(np.ceil(y1)), int(np.floor(y0)) + 1))
        patches[c, rows_, cols] = 1.0
    return {"labels": labels, "annotated": annotated, "patches": patches}
