"""LUNA16 false-positive reduction (seed 002, §4.2.1): layout, ingest, 2-D candidate patches
(synthetic writer: :mod:`raysuite.data.synth.luna16`).

Published layout::

    subset0/ … subset9/                     ~88 scans each (888 in all)
        <seriesuid>.mhd                     MetaImage header (Offset = world origin, mm)
        <seriesuid>.raw                     int16 HU, x fastest (array (Z, Y, X))
    annotations.csv                         seriesuid,coordX,coordY,coordZ,diameter_mm
    candidates_V2.csv                       seriesuid,coordX,coordY,coordZ,class
                                            (also found as candidates_V2/candidates_V2.csv;
                                            the older candidates.csv is accepted)

Coordinates in both CSVs are world millimetres. A *sample* is one candidate row (seed
§4.2.1.2 extracts one patch per row of candidates_V2.csv), labelled ``["nodule"]`` for
class 1 and ``[]`` for class 0. Its ``sample_id`` is ``c<row>``, the 0-based data row of
the candidates CSV, so no series UID is needed to name a sample; the series UID appears
only in ``path`` (the file is named by it). LUNA16 publishes no patient ID, so
``patient_key`` and ``study`` are salted keys of the series UID (LIDC-IDRI, its source,
holds 1018 scans of 1010 patients: a handful of patients may own two LUNA16 scans).
``source_split`` is the subset folder: seed §4.2.1.7 cross-validates over the ten subsets
(:func:`subset_folds`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from raysuite.data import privacy
from raysuite.data.ingest import LayoutError, Ledger, map_safe, read_csv
from raysuite.data.readers import (
    ReadError,
    confined,
    is_inside,
    read_mhd,
    read_mhd_header,
    world_to_voxel,
)

NAME = "luna16"

CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_FILES = ("candidates_V2.csv", "candidates_V2/candidates_V2.csv", "candidates.csv")
LABEL = "nodule"
UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."  # LIDC-IDRI series UIDs as TCIA publishes them

# Seed §3.1.8.1 / §4.2.1.4: image = (image - MIN_BOUND) / (MAX_BOUND - MIN_BOUND), values
# above 1400 HU being artefacts. §4.2.1.2: 64 x 64 patches on planes through the candidate.
MIN_BOUND = -1000.0
MAX_BOUND = 1400.0
PATCH = 64
PLANES = ("axial", "coronal", "sagittal")
PAD_HU = -1000.0  # air, outside the scanned volume
# Seed §4.2.1.3: keep 10 % of the negatives per subset folder (positives are augmented 8x
# by the training method, not here). §4.2.1.7: ten subsets, 8 train / 2 test, 5 times.
NEGATIVE_FRACTION = 0.10
FOLDS = 5


# --------------------------------------------------------------------------- geometry


def voxel_index(voxel_xyz: Sequence[float] | np.ndarray) -> np.ndarray:
    """Nearest voxel (x, y, z) of a continuous position (half-way rounds up)."""
    return np.floor(np.asarray(voxel_xyz, float) + 0.5).astype(np.int64)


# --------------------------------------------------------------------------- ingest


def find_candidates_csv(root: Path) -> Path:
    """The candidates CSV of a LUNA16 root (V2 preferred); LayoutError when there is none."""
    for name in CANDIDATE_FILES:
        if (root / name).is_file():
            return root / name
    raise LayoutError(root, "no candidates_V2.csv (or candidates.csv): not a LUNA16 root")


def find_series(root: Path) -> tuple[dict[str, Path], list[Path]]:
    """``seriesuid -> .mhd`` for every scan under ``subset*/`` (the first in path order
    wins), and the later scans of a seriesuid already found."""
    series: dict[str, Path] = {}
    duplicates: list[Path] = []
    for path in sorted(root.glob("subset*/**/*.mhd")):
        if path.stem in series:
            duplicates.append(path)
        else:
            series[path.stem] = path
    if not series:
        raise LayoutError(root, "no subset*/<seriesuid>.mhd scans: not a LUNA16 root")
    return series, duplicates


def _series_geometry(item: tuple[str, str]) -> dict[str, Any]:
    """Decode one scan ``(root, rel)`` (so a truncated ``.raw``, NaN voxels or a file
    leading out of the root fail here) and return its geometry: shape (X, Y, Z), origin,
    spacing and transform. Runs in a worker process."""
    root, rel = item
    try:
        volume, meta = read_mhd(confined(root, rel), root)
    except ReadError:
        raise
    except Exception as err:  # an unreadable file...
        raise ReadError(rel, f"unreadable MetaImage ({type(err).__name__})", "unreadable") from None
    if volume.ndim != 3 or meta.origin is None or len(meta.origin) != 3:
        raise ReadError(rel, f"{volume.ndim}-D image; LUNA16 scans are 3-D", "unsupported_image")
    z, y, x = volume.shape
    return {
        "shape": (x, y, z),
        "origin": meta.origin,
        "spacing": meta.spacing,
        "transform": meta.direction,
    }


def _annotations(root: Path) -> dict[str, np.ndarray]:
    """``seriesuid -> (K, 4)`` rows (x, y, z, diameter_mm) of ``annotations.csv`` (optional;
    rows with a non-numeric field are skipped: they only feed the ``diameter_mm`` extra)."""
    path = root / "annotations.csv"
    if not path.is_file():
        return {}
    frame = read_csv(path, required=ANNOTATION_COLUMNS, dtype=str, keep_default_na=False)
    values = np.stack(
        [cast(pd.Series, pd.to_numeric(frame[c].str.strip(), errors="coerce")) for c in ANNOTATION_COLUMNS[1:]], 1
    )
    ok = np.isfinite(values).all(1)
    out: dict[str, list[np.ndarray]] = {}
    for uid, row in zip(frame.seriesuid.str.strip()[ok], values[ok], strict=True):
        out.setdefault(uid, []).append(row)
    return {uid: np.asarray(rows, float) for uid, rows in out.items()}


def _bad_row_detail(uid: str, coords: np.ndarray, cls: float) -> str:
    if not uid:
        return "empty seriesuid"
    for name, value in zip(("coordX", "coordY", "coordZ"), coords, strict=True):
        if not np.isfinite(value):
            return f"{name} is not a finite number"
    if cls not in (0.0, 1.0):
        return "class is not 0 or 1"
    return "malformed row"


def ingest(root: Path, ledger: Ledger, workers: int = 1) -> None:
    """Add one manifest row per candidate of ``candidates_V2.csv`` to ``ledger``.

    Each scan is decoded once (in ``workers`` processes); a scan that cannot be read fails
    every candidate on it with the reader's code (``truncated``, ``nan_volume``,
    ``outside_root`` for a scan or ``.raw`` leading out of the root...). A candidate whose
    scan is absent fails ``missing_file``; one whose nearest voxel lies outside its scan
    fails ``box_outside_image``; a row with a non-numeric coordinate, an empty series UID or
    a class other than 0/1 fails ``bad_csv_row``. A second ``.mhd`` of one seriesuid (in
    another subset) adds a ``duplicate_image`` row of its own; the first in path order is
    used.

    Row: ``height, width, depth`` = the scan's Y, X, Z sizes; ``spacing`` (x, y, z) mm;
    ``extra``: ``world`` and ``voxel`` (x, y, z; voxel continuous, see
    :func:`world_to_voxel`), ``class`` and, for class 1, ``diameter_mm`` of the nearest
    annotation whose sphere holds the candidate.
    """
    root = Path(root)
    csv_path = find_candidates_csv(root)
    series, duplicates = find_series(root)
    frame = read_csv(csv_path, required=CANDIDATE_COLUMNS, dtype=str, keep_default_na=False)
    annotations = _annotations(root)
    csv_rel = str(csv_path.relative_to(root))

    uids = frame.seriesuid.str.strip().tolist()
    coords = np.stack(
        [cast(pd.Series, pd.to_numeric(frame[c].str.strip(), errors="coerce")) for c in CANDIDATE_COLUMNS[1:4]], 1
    )
    classes = cast(pd.Series, pd.to_numeric(frame["class"].str.strip(), errors="coerce")).to_numpy(float)
    bad = (
        ~np.isfinite(coords).all(1)
        | ~np.isin(classes, (0.0, 1.0))
        | (frame.seriesuid.str.strip() == "").to_numpy()
    )
    by_series: dict[str, list[int]] = {}
    for i, uid in enumerate(uids):
        if bad[i]:
            detail = _bad_row_detail(uid, coords[i], classes[i])
            ledger.fail(_sample_id(i), csv_rel, "bad_csv_row", f"row {i}: {detail}")
        elif uid not in series:
            ledger.fail(
                _sample_id(i), f"{uid}.mhd", "missing_file", "scan not found under subset*/"
            )
        else:
            by_series.setdefault(uid, []).append(i)

    for path in duplicates:
        rel = path.relative_to(root).as_posix()
        ledger.fail(rel, rel, "duplicate_image", "a second scan of this seriesuid (the first is used)")
    order = sorted(by_series)
    scans = [(str(root), series[uid].relative_to(root).as_posix()) for uid in order]
    results = map_safe(_series_geometry, scans, workers, ledger.progress)
    for uid, (ok, value) in zip(order, results, strict=True):
        rows = by_series[uid]
        if not ok:
            for i in rows:
                ledger.fail_from(_sample_id(i), value, file=str(series[uid].relative_to(root)))
            continue
        _add_series(
            root, ledger, uid, series[uid], value, rows, coords, classes, annotations.get(uid)
        )


def _sample_id(row: int) -> str:
    return f"c{row:07d}"


def _add_series(
    root: Path,
    ledger: Ledger,
    uid: str,
    mhd: Path,
    geometry: dict[str, Any],
    rows: list[int],
    coords: np.ndarray,
    classes: np.ndarray,
    annotations: np.ndarray | None,
) -> None:
    rel = mhd.relative_to(root)
    x, y, z = geometry["shape"]
    patient, study = privacy.salted_key(uid), privacy.salted_key(uid, "s")
    spacing = [float(s) for s in geometry["spacing"]]
    world = coords[rows]
    voxels = world_to_voxel(world, geometry["origin"], geometry["spacing"], geometry["transform"])
    index = voxel_index(voxels)
    inside = np.asarray(((index >= 0) & (index < (x, y, z))).all(1))  # (N,) bool
    diameters = np.full(len(rows), np.nan)
    if annotations is not None:  # nearest annotation whose sphere holds the candidate
        dist = np.linalg.norm(world[:, None, :] - annotations[None, :, :3], axis=-1)  # (N, K)
        dist[dist > annotations[:, 3] / 2] = np.inf
        found = np.isfinite(dist).any(1)
        diameters[found] = annotations[dist[found].argmin(1), 3]
    for i, w, v, ok, d in zip(
        rows, world.tolist(), voxels.tolist(), inside, diameters, strict=True
    ):
        if not ok:
            ledger.fail(
                _sample_id(i),
                str(rel),
                "box_outside_image",
                f"candidate at voxel ({v[0]:.1f}, {v[1]:.1f}, {v[2]:.1f}) outside the {x}x{y}x{z} scan",
            )
            continue
        cls = int(classes[i])
        extra: dict[str, Any] = {"world": w, "voxel": v, "class": cls}
        if cls == 1 and np.isfinite(d):
            extra["diameter_mm"] = float(d)
        ledger.add(
            {
                "sample_id": _sample_id(i),
                "patient_key": patient,
                "study": study,
                "path": str(rel),
                "modality": "CT",
                "height": y,
                "width": x,
                "depth": z,
                "spacing": spacing,
                "labels": [LABEL] if cls == 1 else [],
                "source_split": rel.parts[0],
                "extra": extra,
            }
        )


def negative_subsample_mask(
    df: pd.DataFrame, fraction: float = NEGATIVE_FRACTION, seed: int = 0
) -> np.ndarray:
    """Boolean mask over manifest rows: every positive, and ``fraction`` of the negatives of
    each subset folder (seed §4.2.1.3 keeps 10 % per folder), drawn with ``seed`` in an
    order that does not depend on the row order."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"negative fraction {fraction} outside [0, 1]")
    positive = np.asarray([LABEL in labels for labels in df.labels], bool)
    keep = positive.copy()
    rng = np.random.default_rng(seed)
    subsets = df.source_split.to_numpy()
    ids = df.sample_id.to_numpy()
    for subset in sorted(set(subsets[~positive])):
        idx = np.flatnonzero((subsets == subset) & ~positive)
        idx = idx[np.argsort(ids[idx], kind="stable")]
        keep[idx[rng.permutation(len(idx))[: int(round(fraction * len(idx)))]]] = True
    return keep


def subset_folds(df: pd.DataFrame, folds: int = FOLDS) -> np.ndarray:
    """int8 fold per manifest row from its subset folder: LUNA16's ten subsets dealt in order
    over ``folds`` folds, so with 5 folds subsets 2k and 2k+1 form fold k (seed §4.2.1.7:
    ten subsets, two held out per run, five runs). A scan lives in one subset, so folds
    never split a scan. Use with :func:`raysuite.data.manifest.fold_split`."""
    if not 2 <= folds <= 10:
        raise ValueError(f"folds must be within 2..10 (ten subsets), got {folds}")
    numbers = []
    for name in df.source_split:
        digits = str(name).removeprefix("subset")
        if not (str(name).startswith("subset") and digits.isdigit() and int(digits) < 10):
            raise ValueError(f"source_split {name!r} is not one of subset0 … subset9")
        numbers.append(int(digits) * folds // 10)
    return np.asarray(numbers, np.int8)


# --------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """Seed §4.2.1.2 / §4.2.1.4: a ``patch`` x ``patch`` (64) view through the candidate on
    ``plane`` (axial, coronal or sagittal), HU clipped to ``hu_window`` (MIN_BOUND -1000,
    MAX_BOUND 1400) and scaled to [0, 1]. Patches are cut in voxels, not resampled."""

    hu_window: tuple[float, float] = (MIN_BOUND, MAX_BOUND)
    patch: int = PATCH
    plane: str = "axial"

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise ValueError(f"plane {self.plane!r} is not one of {list(PLANES)}")
        if self.patch < 1:
            raise ValueError(f"patch size {self.patch} must be positive")
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"HU window {self.hu_window} must be (low, high) with low < high")

    def key(self) -> str:
        lo, hi = self.hu_window
        return f"win{lo:g},{hi:g}-patch{self.patch}-{self.plane}"


def extract_patch(
    volume: np.ndarray, voxel_xyz: Sequence[float], prep: Preprocessing
) -> np.ndarray:
    """``(Z, Y, X)`` HU volume -> ``(patch, patch)`` float32 in [0, 1] centred on the voxel
    nearest ``voxel_xyz`` (x, y, z): axial = (Y, X) rows/columns at that slice, coronal =
    (Z, X), sagittal = (Z, Y), in array order. Outside the volume counts as -1000 HU."""
    cx, cy, cz = (int(v) for v in voxel_index(voxel_xyz))
    nz, ny, nx = volume.shape
    fixed, size, plane_of = {
        "axial": (cz, nz, lambda k: (volume[k], cy, cx)),
        "coronal": (cy, ny, lambda k: (volume[:, k, :], cz, cx)),
        "sagittal": (cx, nx, lambda k: (volume[:, :, k], cz, cy)),
    }[prep.plane]
    p = prep.patch
    out = np.full((p, p), PAD_HU, np.float32)
    if 0 <= fixed < size:
        image, rc, cc = plane_of(fixed)
        r0, c0 = rc - p // 2, cc - p // 2
        rs, re = max(r0, 0), min(r0 + p, image.shape[0])
        cs, ce = max(c0, 0), min(c0 + p, image.shape[1])
        if rs < re and cs < ce:
            out[rs - r0 : re - r0, cs - c0 : ce - c0] = image[rs:re, cs:ce]
    lo, hi = prep.hu_window
    return ((np.clip(out, lo, hi) - lo) / (hi - lo)).astype(np.float32)


_VOLUME_CACHE: dict[tuple, np.ndarray] = {}


def _volume(root: Path, rel: str) -> np.ndarray:
    """The scan ``root / rel`` as ``(Z, Y, X)`` HU, keeping the last one read (candidates
    of a scan are usually consecutive); keyed on the size and mtime of the .mhd and .raw.
    ReadError ``outside_root`` when either resolves outside ``root``."""
    path = confined(root, rel)
    raw = path.parent / read_mhd_header(path)["ElementDataFile"]
    stats = [os.stat(p) for p in (path, raw) if p.exists() and is_inside(root, p)]
    key = (str(path.resolve()), *((s.st_size, s.st_mtime_ns) for s in stats))
    if key not in _VOLUME_CACHE:
        _VOLUME_CACHE.clear()
        _VOLUME_CACHE[key] = read_mhd(path, root)[0]
    return _VOLUME_CACHE[key]


def preprocess(root: Path, row: Mapping[str, Any], prep: Preprocessing) -> np.ndarray:
    """One manifest row -> its ``(patch, patch)`` float32 patch in [0, 1] (seed §4.2.1.2,
    §4.2.1.4), read from ``root / row["path"]`` at ``row["extra"]["voxel"]``."""
    extra = row["extra"]
    extra = json.loads(extra) if isinstance(extra, str) else extra
    return extract_patch(_volume(Path(root), str(row["path"])), extra["voxel"], prep)
