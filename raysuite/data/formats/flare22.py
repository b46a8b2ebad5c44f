"""FLARE 2022 (seed 001, §4.3): layout, ingest and preprocessing (synthetic writer:
:mod:`raysuite.data.synth.flare22`).

Published layout (training set)::

    FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz   CT, HU, int16
    FLARE22_LabeledCase50/labels/FLARE22_Tr_0001.nii.gz        uint8, 0 = background, 1..13
    FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz         CT without labels

Ingest finds images as ``*_0000.nii.gz`` anywhere under the root; a case is labelled when a
``labels/<case>.nii.gz`` sits beside its ``images/`` folder. One manifest row per case.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from raysuite.data import privacy
from raysuite.data.ingest import LayoutError, Ledger, SampleError
from raysuite.data.readers import ReadError, confined, read_nifti

ORGANS = (
    "liver", "right_kidney", "spleen", "pancreas", "aorta", "inferior_vena_cava",
    "right_adrenal_gland", "left_adrenal_gland", "gallbladder", "esophagus", "stomach",
    "duodenum", "left_kidney",
)  # fmt: skip
NUM_CLASSES = len(ORGANS) + 1  # with background


@dataclass(frozen=True)
class Preprocessing:
    """Seed §4.3: RAS, spacing (1, 1, 2.5) mm, clip [-500, 500] HU -> [0, 1], crop to the
    non-zero box, pad X and Y symmetrically to at least ``min_size``."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 2.5)
    window: tuple[float, float] = (-500.0, 500.0)
    min_size: int = 96

    def key(self) -> str:
        return f"sp{self.spacing}-win{self.window}-min{self.min_size}"


# --------------------------------------------------------------------------- ingest

NAME = "flare22"


def _image_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*_0000.nii.gz"))


def _label_of(image: Path) -> Path | None:
    case_id = image.name[: -len("_0000.nii.gz")]
    if image.parent.name != "images":
        return None
    label = image.parent.parent / "labels" / f"{case_id}.nii.gz"
    return label if label.exists() else None


def _ingest_case(item: tuple[str, str, str | None]) -> dict[str, Any]:
    """Decode one case (image and, when present, label) and return its manifest row."""
    root, rel_image, rel_label = item
    image, meta = read_nifti(confined(root, rel_image))
    if image.ndim != 3:
        raise ReadError(rel_image, f"expected a 3-D CT volume, got shape {image.shape}", "unsupported_image")
    organs: list[str] = []
    if rel_label is not None:
        label, _ = read_nifti(confined(root, rel_label), dtype=np.float32)
        if label.shape != image.shape:
            raise SampleError(rel_label, "shape_mismatch", f"label shape {label.shape} differs from image {image.shape}")
        present = np.unique(label.astype(np.int64))
        if present.min() < 0 or present.max() > len(ORGANS):
            raise SampleError(rel_label, "bad_label", f"label values {int(present.min())}..{int(present.max())} outside 0..{len(ORGANS)}")
        organs = [ORGANS[i - 1] for i in present if i > 0]
    case_id = Path(rel_image).name[: -len("_0000.nii.gz")]
    return {
        "sample_id": case_id,
        "patient_key": privacy.salted_key(case_id),  # FLARE22 has one scan per patient
        "path": rel_image,
        "modality": "CT",
        "height": int(image.shape[1]),
        "width": int(image.shape[0]),
        "depth": int(image.shape[2]),
        "spacing": list(meta.spacing),
        "labels": organs,
        "mask": rel_label,
        "source_split": "labelled" if rel_label is not None else "unlabelled",
        "extra": {"labelled": rel_label is not None},
    }


def ingest(root: Path, ledger: Ledger, workers: int = 1) -> None:
    """Decode every ``*_0000.nii.gz`` under ``root`` (and its label when one exists) into
    one manifest row per case: ``mask`` is the label path, ``labels`` the organs present.
    Arrays are (X, Y, Z) in RAS, so ``width`` = X, ``height`` = Y, ``depth`` = Z. A second
    image of one case name (in another folder) fails ``duplicate_image``; the first in path
    order is ingested."""
    images = _image_files(root)
    if not images:
        raise LayoutError(root, "not a FLARE22 layout: no *_0000.nii.gz images (e.g. FLARE22_LabeledCase50/images/)")
    items = []
    cases: set[str] = set()
    for image in images:
        label = _label_of(image)
        rel = image.relative_to(root).as_posix()
        case_id = image.name[: -len("_0000.nii.gz")]
        if case_id in cases:
            ledger.fail(case_id, rel, "duplicate_image", "a second image of this case (the first is ingested)")
            continue
        cases.add(case_id)
        items.append((case_id, (str(root), rel, label.relative_to(root).as_posix() if label else None)))
    ledger.run(_ingest_case, items, workers)


def cases_from_manifest(df: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """The case table methods use: case_id, image, label (absolute paths; None when
    unlabelled), labelled; sorted by case_id."""
    root = Path(root)
    return pd.DataFrame(
        {
            "case_id": df.sample_id.to_numpy(),
            "image": [str(root / p) for p in df.path],
            "label": [str(root / m) if m is not None else None for m in df["mask"]],
            "labelled": [m is not None for m in df["mask"]],
        }
    ).sort_values("case_id", ignore_index=True)


def split_cases(cases: pd.DataFrame, train_cases: int, val_cases: int, split_seed: int = 0) -> pd.DataFrame:
    """Per-case split of the labelled cases, seed 001's counts (never a case's slices in
    two splits; FLARE22 has one scan per patient, so this is a patient-level split).

    Unlabelled cases get split ``unlabelled``; labelled ones ``val`` (first ``val_cases``
    after a seeded shuffle), ``train`` (next ``train_cases``) and ``unused``.
    """
    labelled = cases[cases.labelled].case_id.tolist()
    if train_cases + val_cases > len(labelled):
        raise ValueError(
            f"need {train_cases} train + {val_cases} validation labelled cases, found {len(labelled)}"
        )
    order = np.random.default_rng(split_seed).permutation(len(labelled))
    shuffled = [labelled[i] for i in order]
    split = {c: "val" for c in shuffled[:val_cases]}
    split.update({c: "train" for c in shuffled[val_cases : val_cases + train_cases]})
    out = cases.copy()
    out["split"] = [
        split.get(c, "unused") if lab else "unlabelled" for c, lab in zip(out.case_id, out.labelled, strict=True)
    ]
    return out


# --------------------------------------------------------------------- preprocessing


def preprocess(image_path: str, label_path: str | None, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray | None]:
    """One case -> (Z, X, Y) float32 slices in [0, 1] and (Z, X, Y) uint8 labels (or None)."""
    image, meta = read_nifti(image_path)
    if image.ndim != 3:
        raise ReadError(image_path, f"expected a 3-D CT volume, got shape {image.shape}")
    label = None
    if label_path is not None:
        label, _ = read_nifti(label_path, dtype=np.float32)
        if label.shape != image.shape:
            raise ReadError(label_path, f"label shape {label.shape} differs from image {image.shape}")
    factors = [s / t for s, t in zip(meta.spacing, prep.spacing, strict=True)]
    image = np.asarray(ndimage.zoom(image, factors, order=1, mode="nearest"))  # typed as scipy's Array
    lo, hi = prep.window
    image = (np.clip(image, lo, hi) - lo) / (hi - lo)
    if label is not None:
        label = np.asarray(ndimage.zoom(label, factors, order=0, mode="nearest")).astype(np.uint8)
    nonzero = np.argwhere(image > 0)
    if len(nonzero):
        start, stop = nonzero.min(0), nonzero.max(0) + 1
        box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        image = image[box]
        label = label[box] if label is not None else None
    pad = [(0, 0)] * 3
    for axis in (0, 1):
        short = max(0, prep.min_size - image.shape[axis])
        pad[axis] = (short // 2, short - short // 2)
    image = np.pad(image, pad)
    if label is not None:
        label = np.pad(label, pad)
    image = np.moveaxis(image, 2, 0).astype(np.float32)
    label = np.moveaxis(label, 2, 0) if label is not None else None
    return image, label
