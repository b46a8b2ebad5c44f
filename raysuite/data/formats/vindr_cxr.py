"""VinDr-CXR (seed 000, §2 and §2.1): layout, ingest with box fusion, preprocessing
(synthetic writer: :mod:`raysuite.data.synth.vindr_cxr`).

Published layouts (``ROOT`` is the folder holding them)::

    Kaggle "VinBigData Chest X-ray Abnormalities Detection"
        train.csv                  image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
        train/<image_id>.dicom     15,000 DICOMs (MONOCHROME1/2, 12-16 bit, ~2000-3000 px)
        test/<image_id>.dicom      3,000 unlabelled DICOMs (not ingested: no labels)
        sample_submission.csv

    PhysioNet VinDr-CXR 1.0.0
        annotations/annotations_train.csv   image_id,rad_id,x_min,y_min,x_max,y_max,class_name
        annotations/annotations_test.csv    the same without rad_id (consensus of 5 readers)
        train/<image_id>.dicom   test/<image_id>.dicom

``image_id`` is a 32-hex digest; each training image is read by three radiologists
(``rad_id`` R1..R17), one CSV row per box, and a radiologist who saw nothing writes one
"No finding" row (class 14) with empty coordinates. Coordinates are pixels of the stored
DICOM. ``.dcm`` files are accepted beside ``.dicom``; when both exist the ``.dicom`` is
ingested and the ``.dcm`` fails ``duplicate_image``, as does an image_id found again in a
later split.
``train.csv`` wins when both CSVs exist; ``test/`` is ingested (``source_split`` "test")
only when ``annotations_test.csv`` sits in ``annotations/`` or in ``ROOT``: the Kaggle test
images carry no labels and the seed (§2) did not use the test set either.

Ingest (one sample per image on disk or named by a CSV): radiologists' boxes are checked
(a coordinate outside ``[0, width] x [0, height]`` or ``x_min >= x_max`` fails the whole
image as ``box_outside_image``; an unparsable row as ``bad_csv_row``), then fused per class
with :func:`fuse_boxes` (seed §2.1, eq. 1). Real VinDr headers are stripped to the image
tags, so the patient key is the salted image id unless the DICOM carries a PatientID
(synthetic data does, with several images per patient).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysuite.data import intensity, privacy
from raysuite.data.ingest import LayoutError, Ledger, SampleError, read_csv
from raysuite.data.readers import ReadError, confined, read_dicom

NAME = "vindr_cxr"

# The published classes and ids (Kaggle train.csv ``class_id``); 14 is "No finding".
CLASSES = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation",
    "ILD", "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
)  # fmt: skip
NO_FINDING = "No finding"
NO_FINDING_ID = 14
CLASS_IDS = {name: i for i, name in enumerate(CLASSES)} | {NO_FINDING: NO_FINDING_ID}
FUSION_IOU = 0.2  # seed §2.1: boxes overlap when IoU >= 20 %
SEED_ABNORMAL_IMAGES = 4394  # seed §2.1: training images left after dropping "No finding"
COORDS = ("x_min", "y_min", "x_max", "y_max")
KAGGLE_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", *COORDS)
PHYSIONET_COLUMNS = ("image_id", "rad_id", *COORDS, "class_name")
TEST_COLUMNS = ("image_id", *COORDS, "class_name")  # rad_id optional (consensus labels)
EXTENSIONS = (".dicom", ".dcm")


# ---------------------------------------------------------------------------- fusion


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fuse_boxes(
    boxes: list[dict], width: int, height: int, iou_threshold: float = FUSION_IOU
) -> list[dict]:
    """Fuse radiologists' boxes of one image into consensus boxes (seed §2.1, eq. 1).

    ``boxes``: dicts with ``label``, ``x_min``, ``y_min``, ``x_max``, ``y_max`` (pixels of a
    ``width`` x ``height`` image) and optionally ``rad_id``. Returns dicts ``label, x_min,
    y_min, x_max, y_max, readers`` in pixels, sorted by (class id, x_min, y_min, x_max, y_max).

    The rule, the seed's "average rectangle" modification of weighted boxes fusion:

    1. Classes are fused independently.
    2. Coordinates are divided by the image's own width (x) and height (y). (IoU and the
       mean are both invariant to this scaling, so the result equals fusing in pixels.)
    3. Within a class the boxes are visited in the order (``rad_id``, x_min, y_min, x_max,
       y_max): all boxes have equal confidence, so this canonical order replaces WBF's
       sort by score and makes the result independent of the CSV's row order.
    4. A box may join a cluster that holds no box of its own radiologist; among those, the
       cluster whose *current* fused box has the highest IoU with it, if that IoU is
       ``>= iou_threshold`` (with a 1e-9 tolerance for rounding; ties go to the cluster
       created first). Otherwise it starts a new cluster. So two boxes of one radiologist
       never merge: they stay two findings, and a box missing ``rad_id`` counts as the
       same (unnamed) radiologist as every other such box, which keeps already-fused
       consensus boxes (VinDr's test labels) apart.
    5. After every join the cluster's fused box is the plain mean of its members'
       coordinates (eq. 1: equal weights, since every box is an expert's), and later boxes
       are compared against this running mean.
    6. ``readers`` is the number of boxes in the cluster, i.e. of agreeing radiologists.

    Example (100 x 200 image, one class): R1 (0, 0, 10, 10) and R2 (6, 0, 16, 10) have IoU
    0.25 and fuse to (3, 0, 13, 10); R3 (9, 0, 19, 10) has IoU 0.05 with R1 alone but 0.25
    with that running mean, so it joins: (5, 0, 15, 10), readers 3.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    scale = np.array([width, height, width, height], np.float64)
    by_class: dict[str, list[tuple[str, tuple[float, ...]]]] = defaultdict(list)
    for box in boxes:
        coords = tuple(float(box[k]) for k in COORDS)
        by_class[str(box["label"])].append((str(box.get("rad_id") or ""), coords))
    fused: list[dict] = []
    for label, members in by_class.items():
        clusters: list[dict[str, Any]] = []  # {"rads": set, "boxes": [norm], "mean": norm}
        for rad, coords in sorted(members):
            norm = tuple(np.asarray(coords) / scale)
            best, best_iou = None, -1.0
            for cluster in clusters:
                if rad in cluster["rads"]:
                    continue
                iou = _iou(norm, cluster["mean"])
                if iou >= iou_threshold - 1e-9 and iou > best_iou:
                    best, best_iou = cluster, iou
            if best is None:
                clusters.append({"rads": {rad}, "boxes": [norm], "mean": norm})
            else:
                best["rads"].add(rad)
                best["boxes"].append(norm)
                best["mean"] = tuple(np.mean(best["boxes"], axis=0))
        for cluster in clusters:
            px = np.asarray(cluster["mean"]) * scale
            fused.append({"label": label, **{k: float(v) for k, v in zip(COORDS, px, strict=True)},
                          "readers": len(cluster["boxes"])})  # fmt: skip
    fused.sort(key=lambda b: (_class_order(b["label"]), *(b[k] for k in COORDS)))
    return fused


def _class_order(name: str) -> tuple[int, str]:
    return CLASS_IDS.get(name, len(CLASS_IDS)), name


# ---------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class _Layout:
    name: str  # "kaggle" or "physionet"
    train_csv: Path
    test_csv: Path | None


def find_layout(root: Path) -> _Layout:
    """Which VinDr layout ``root`` holds; :class:`LayoutError` naming what is missing."""
    root = Path(root)
    kaggle, physionet = root / "train.csv", root / "annotations" / "annotations_train.csv"
    if kaggle.is_file():
        layout = "kaggle"
        train_csv = kaggle
    elif physionet.is_file():
        layout = "physionet"
        train_csv = physionet
    else:
        raise LayoutError(
            root,
            "not a VinDr-CXR root: neither train.csv (Kaggle) nor annotations/annotations_train.csv "
            "(PhysioNet) found",
        )
    if not (root / "train").is_dir():
        raise LayoutError(
            root / "train", f"image folder missing ({train_csv.name} names its DICOMs there)"
        )
    test_csv = next(
        (
            p
            for p in (root / "annotations" / "annotations_test.csv", root / "annotations_test.csv")
            if p.is_file()
        ),
        None,
    )
    if test_csv is not None and not (root / "test").is_dir():
        raise LayoutError(
            root / "test", f"image folder missing ({test_csv.name} names its DICOMs there)"
        )
    return _Layout(layout, train_csv, test_csv)


def _image_files(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """image_id -> its file (``.dicom`` preferred), and the ``.dcm`` twins left over."""
    files: dict[str, Path] = {}
    twins: list[Path] = []
    for ext in EXTENSIONS:  # .dicom first, so it wins over .dcm
        for path in sorted(folder.glob(f"*{ext}")):
            if path.stem in files:
                twins.append(path)
            elif path.is_file():
                files[path.stem] = path
    return files, twins


def _csv_rows(path: Path, required: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Rows of an annotation CSV grouped by image_id, each with its CSV line number."""
    frame = read_csv(path, required=required, dtype=str, keep_default_na=False)
    keep = [
        c for c in ("image_id", "class_name", "class_id", "rad_id", *COORDS) if c in frame.columns
    ]
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line, rec in enumerate(frame.loc[:, keep].to_dict("records"), start=2):
        grouped[str(rec["image_id"]).strip()].append({**rec, "line": line})
    return grouped


def _is_abnormal(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(str(r.get("class_name", "")).strip() != NO_FINDING for r in rows)


def ingest(root: Path, ledger: Ledger, workers: int = 1, *, abnormal_only: bool = False) -> None:
    """Ingest a VinDr-CXR root (either layout) into ``ledger``: one row per image.

    ``abnormal_only`` drops, before anything is read, the images whose every CSV row is
    "No finding" (seed §2.1: 4,394 of 15,000 training images remain); they are then not
    samples at all, so found == ingested + failed still holds. Images on disk that no CSV
    names are failed as ``no_annotation`` either way. Each image is decoded (in ``workers``
    processes) so truncated or undecodable files fail with the reader's reason.
    """
    root = Path(root)
    layout = find_layout(root)
    required = KAGGLE_COLUMNS if layout.name == "kaggle" else PHYSIONET_COLUMNS
    splits: list[tuple[str, Path, Sequence[str]]] = [("train", layout.train_csv, required)]
    if layout.test_csv is not None:
        splits.append(("test", layout.test_csv, TEST_COLUMNS))
    items: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for split, csv_path, columns in splits:
        annotations = _csv_rows(csv_path, columns)
        files, twins = _image_files(root / split)
        csv_name = csv_path.relative_to(root).as_posix()
        for twin in twins:
            ledger.fail(
                twin.stem,
                twin.relative_to(root).as_posix(),
                "duplicate_image",
                "a .dcm beside the .dicom of the same image_id (the .dicom is ingested)",
            )
        for image_id in sorted(set(annotations) | set(files)):
            rows = annotations.get(image_id)
            if abnormal_only and rows is not None and not _is_abnormal(rows):
                continue
            rel = f"{split}/{image_id}{files[image_id].suffix if image_id in files else EXTENSIONS[0]}"
            if image_id in seen:
                ledger.fail(
                    image_id,
                    rel,
                    "duplicate_image",
                    f"image_id also in an earlier split; the {split} copy is not ingested",
                )
            elif rows is None:
                ledger.fail(image_id, rel, "no_annotation", f"{rel} is not named in {csv_name}")
            elif image_id not in files:
                ledger.fail(
                    image_id,
                    rel,
                    "missing_file",
                    f"{csv_name} names {image_id} but {rel} (or .dcm) is not on disk",
                )
            else:
                items.append((image_id, {"root": str(root), "image_id": image_id, "path": rel, "split": split,
                                         "layout": layout.name, "csv": csv_name, "rows": rows}))  # fmt: skip
            seen.add(image_id)
    ledger.run(_ingest_one, items, workers)


def _parse(item: Mapping[str, Any]) -> tuple[list[dict], set[str], set[str]]:
    """CSV rows of one image -> (raw boxes, radiologists, radiologists who said No finding).

    Raises :class:`SampleError` ``bad_csv_row`` for an empty or unknown class (unknown only
    in the Kaggle layout, whose ``class_id`` must also match the published id), or a finding
    without four finite coordinates. Coordinates on a "No finding" row are ignored.
    """
    raw: list[dict] = []
    radiologists: set[str] = set()
    no_finding: set[str] = set()
    for row in item["rows"]:
        where = f"{item['csv']} line {row['line']}"
        name = str(row.get("class_name", "")).strip()
        rad = str(row.get("rad_id", "") or "").strip()
        if not name:
            raise SampleError(item["path"], "bad_csv_row", f"{where}: empty class_name")
        if item["layout"] == "kaggle" and item["split"] == "train":
            if name not in CLASS_IDS:
                raise SampleError(item["path"], "bad_csv_row", f"{where}: unknown class_name")
            cid = str(row.get("class_id", "")).strip()
            try:
                ok = int(float(cid)) == CLASS_IDS[name]
            except ValueError:
                ok = False
            if not ok:
                raise SampleError(
                    item["path"],
                    "bad_csv_row",
                    f"{where}: class_id is not {CLASS_IDS[name]} ({name})",
                )
        radiologists.add(rad)
        if name == NO_FINDING:
            no_finding.add(rad)
            continue
        try:
            coords = [float(str(row.get(k, "")).strip()) for k in COORDS]
        except ValueError:
            coords = [math.nan]
        if len(coords) != 4 or not all(math.isfinite(c) for c in coords):
            raise SampleError(
                item["path"],
                "bad_csv_row",
                f"{where}: a finding without four numeric coordinates",
            )
        raw.append(
            {
                "label": name,
                **dict(zip(COORDS, coords, strict=True)),
                "rad_id": rad,
                "line": row["line"],
            }
        )
    return raw, radiologists, no_finding


def _ingest_one(item: Mapping[str, Any]) -> dict[str, Any]:
    """One image (a ``Ledger.run`` worker): parse its rows, decode it, check and fuse boxes."""
    raw, radiologists, no_finding = _parse(item)
    path = confined(item["root"], item["path"])
    try:
        image, meta = read_dicom(path)
    except ReadError:
        raise
    except Exception as err:  # anything else the decoders throw still names the file
        raise ReadError(path, f"unreadable ({type(err).__name__})", "unreadable") from None
    if not np.isfinite(image).all():
        raise ReadError(path, "contains NaN or Inf pixels", "nan_volume")
    height, width = (int(n) for n in image.shape)
    for box in raw:
        if not (
            0 <= box["x_min"] < box["x_max"] <= width and 0 <= box["y_min"] < box["y_max"] <= height
        ):
            coords = ", ".join(f"{box[k]:g}" for k in COORDS)
            raise SampleError(
                item["path"],
                "box_outside_image",
                f"{item['csv']} line {box['line']}: box ({coords}) not inside the "
                f"{width} x {height} image with x_min < x_max, y_min < y_max",
            )
    fused = fuse_boxes(raw, width, height)
    labels = sorted({b["label"] for b in fused}, key=_class_order)
    per_rad = Counter(b["rad_id"] for b in raw)
    return {
        "sample_id": item["image_id"],
        "patient_key": meta.patient_key or privacy.salted_key(item["image_id"]),
        "study": meta.study_key or "",
        "path": item["path"],
        "modality": meta.modality or "DX",
        "height": height,
        "width": width,
        "depth": 1,
        "spacing": [float(s) for s in meta.spacing],
        "labels": labels,
        "boxes": fused,
        "mask": None,
        "source_split": item["split"],
        "extra": {
            "layout": item["layout"],
            "raw_boxes": len(raw),
            "raw_boxes_per_radiologist": {r: per_rad.get(r, 0) for r in sorted(radiologists)},
            "no_finding_votes": len(no_finding),
            "patient_from": "dicom" if meta.patient_key else "image_id",
            "photometric": meta.photometric,
            "transfer_syntax": meta.transfer_syntax,
            "bits_stored": meta.bits,
        },
    }


def abnormal(df: pd.DataFrame, classes: Sequence[str] = CLASSES) -> pd.Series:
    """Boolean Series (``df``'s index): the image has at least one fused box of ``classes``
    (its ``labels`` are the classes of its fused boxes). ``df[abnormal(df)]`` is the seed's
    §2.1 subset (4,394 Kaggle training images).

    PhysioNet's ``annotations_train.csv`` also carries local labels beyond the 14 published
    Kaggle classes (e.g. "Rib fracture"); an image whose only findings are of those has no
    box a detector of ``classes`` is trained on (:func:`scaled_boxes` leaves them out), so it
    is not abnormal here: kept, it would be an image of "no finding" for the detector, which
    §2.1 discards."""
    wanted = set(classes)
    return (
        df["labels"]
        .map(lambda labels: any(str(c) in wanted for c in labels))
        .astype(bool)
        .rename("abnormal")
    )


# --------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """Seed §2.1 and §3.3: every DICOM resized to ``size`` x ``size`` (512), then histogram
    normalisation (:func:`raysuite.data.intensity.equalize_histogram` with ``bins`` levels
    over the image's own range; ``equalize=False`` rescales min-max instead). ``voi``
    applies the DICOM's VOI LUT / window before (MONOCHROME1 is always inverted)."""

    size: int = 512
    equalize: bool = True
    bins: int = 256
    voi: bool = True

    def key(self) -> str:
        norm = f"he{self.bins}" if self.equalize else "minmax"
        return f"vindr-s{self.size}-{norm}-voi{int(self.voi)}"


def preprocess(root: Path, row: Mapping[str, Any], prep: Preprocessing) -> np.ndarray:
    """One manifest row -> ``(prep.size, prep.size)`` float32 image in [0, 1].

    Read (Modality + VOI LUT, MONOCHROME1 inverted so bright = dense), resize to the square
    with :func:`raysuite.data.intensity.resize` (aspect ratio not kept, as in seed §2.1),
    then histogram-equalise. Boxes follow with :func:`scaled_boxes`.
    """
    path = Path(root) / str(row["path"])
    image, _ = read_dicom(path, voi=prep.voi)
    expected = (int(row["height"]), int(row["width"]))
    if image.shape != expected:
        raise ReadError(
            path, f"image is {image.shape}, the manifest says {expected}", "shape_mismatch"
        )
    image = intensity.resize(image, prep.size)
    out = (
        intensity.equalize_histogram(image, prep.bins) if prep.equalize else intensity.minmax(image)
    )
    return out.astype(np.float32)


def scaled_boxes(
    row: Mapping[str, Any], size: int | tuple[int, int], classes: Sequence[str] = CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """A row's fused boxes in the coordinates of its image resized to ``size`` (an int for a
    square, as :func:`preprocess` makes, or ``(h, w)``).

    Returns ``boxes`` ``(N, 4)`` float32 ``x_min, y_min, x_max, y_max`` (x scaled by
    ``size / width``, y by ``size / height``, matching :func:`preprocess`) and ``labels``
    ``(N,)`` int64, the index in ``classes`` (by default the published ids 0..13; a
    detector reserving 0 for background adds 1). Boxes of classes not in ``classes``
    (PhysioNet's extra local labels) are left out.
    """
    kept = [b for b in row["boxes"] if b["label"] in classes]
    index = {c: i for i, c in enumerate(classes)}
    coords = np.asarray([[b[k] for k in COORDS] for b in kept], np.float64).reshape(-1, 4)
    hw = (size, size) if isinstance(size, int) else size
    boxes = intensity.scale_boxes(coords, (int(row["height"]), int(row["width"])), hw)
    return boxes, np.asarray([index[b["label"]] for b in kept], np.int64)
