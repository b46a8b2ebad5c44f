"""Synthetic LUNA16: phantom chest CTs with nodules and vessels as MetaImage scans in
``subset0 … subset9`` with ``annotations.csv`` and ``candidates_V2.csv``
(:mod:`raysuite.data.formats.luna16` describes the layout and ingests it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from raysuite.data.formats.luna16 import (
    ANNOTATION_COLUMNS,
    CANDIDATE_COLUMNS,
    UID_ROOT,
    voxel_index,
)
from raysuite.data.readers import world_to_voxel

# Nodules per scan, cycled (about 2 of 3 LUNA16 scans hold a nodule).
NODULES_PER_SCAN = (1, 2, 1, 0)


def _write_mhd(
    mhd: Path, volume: np.ndarray, origin: Sequence[float], spacing: Sequence[float]
) -> None:
    """Write a ``(Z, Y, X)`` int16 volume as LUNA16 does: ``<uid>.mhd`` + ``<uid>.raw``."""
    raw = mhd.with_suffix(".raw")
    z, y, x = volume.shape
    num = " ".join
    header = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        "TransformMatrix = 1 0 0 0 1 0 0 0 1",
        f"Offset = {num(f'{v:.10g}' for v in origin)}",
        "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI",
        f"ElementSpacing = {num(f'{v:.10g}' for v in spacing)}",
        f"DimSize = {x} {y} {z}",
        "ElementType = MET_SHORT",
        f"ElementDataFile = {raw.name}",
    ]
    mhd.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(np.ascontiguousarray(volume, "<i2").tobytes())
    mhd.write_text("\n".join(header) + "\n")


def _uid(rng: np.random.Generator) -> str:
    digits = rng.integers(0, 10, 30)
    digits[0] = rng.integers(1, 10)
    return UID_ROOT + "".join(str(d) for d in digits)


@dataclass
class _Scan:
    volume: np.ndarray  # (Z, Y, X) int16 HU
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    nodules: list[tuple[np.ndarray, float]]  # world centre (x, y, z), diameter mm
    positives: list[np.ndarray]  # world (x, y, z) of class-1 candidates
    negatives: list[np.ndarray]  # world (x, y, z) of class-0 candidates


def synth_scan(
    rng: np.random.Generator, size: int = 64, slices: int = 40, nodules: int = 1
) -> _Scan:
    """One phantom chest CT: ``(Z, Y, X)`` int16 HU with a soft-tissue body (~40 HU, fat
    rim), two lungs (~-850 HU), thin vessels (tube profile peaking near -350 HU, as thin
    vessels do under partial volume) and ``nodules`` solid nodules (spheres of 6-9 mm,
    +50..100 HU; fewer when the lungs have no room).
    Class-1 candidates sit at nodule centres (±0.5 mm), class-0 ones on vessels and in
    plain parenchyma away from nodules, as the CAD candidates of candidates_V2.csv do."""
    sxy = round(float(rng.uniform(0.6, 0.8)), 6)
    sz = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5]))
    spacing = (sxy, sxy, sz)
    origin = (
        round(float(rng.uniform(-220, -150)), 6),
        round(float(rng.uniform(-220, -150)), 6),
        round(float(rng.uniform(-350, -100)), 6),
    )
    zz, yy, xx = np.meshgrid(np.arange(slices), np.arange(size), np.arange(size), indexing="ij")
    grid_mm = np.stack([xx * sxy, yy * sxy, zz * sz], -1).astype(np.float32)  # (Z, Y, X, 3)
    c = size / 2 + rng.uniform(-1.5, 1.5, 2)
    r_body = ((xx - c[0]) / (0.45 * size)) ** 2 + ((yy - c[1]) / (0.36 * size)) ** 2
    hu = np.full(xx.shape, -1000.0, np.float32)
    hu[r_body < 1.0] = -100.0
    hu[r_body < 0.8] = 40.0
    taper = 1 - 0.25 * ((zz - slices / 2) / (slices / 2)) ** 2
    lung = np.zeros(xx.shape, bool)
    for side in (-1, 1):
        lx, ly = c[0] + side * 0.2 * size, c[1] - 0.02 * size
        ax, ay = 0.15 * size * rng.uniform(0.9, 1.1), 0.24 * size * rng.uniform(0.9, 1.1)
        lung |= ((xx - lx) / (ax * taper)) ** 2 + ((yy - ly) / (ay * taper)) ** 2 < 1
    hu[lung] = -850.0
    lung_idx = np.argwhere(lung)  # (N, 3) z, y, x

    def to_world(zyx: np.ndarray) -> np.ndarray:
        return np.asarray(origin) + np.asarray(zyx, float)[::-1] * np.asarray(spacing)

    def lung_point() -> np.ndarray:
        return lung_idx[rng.integers(len(lung_idx))] + rng.uniform(-0.5, 0.5, 3)

    def far(world: np.ndarray, centres: list[tuple[np.ndarray, float]], margin: float) -> bool:
        return all(np.linalg.norm(world - p) > d / 2 + margin for p, d in centres)

    # vessels: lines through lung points, Gaussian cross-section (sigma 0.8 mm)
    vessels = []
    for _ in range(4):
        p0 = to_world(lung_point()) - np.asarray(origin)
        d = rng.normal(0, 1, 3) + [0, 0, 2.0]
        d /= np.linalg.norm(d)
        rel = grid_mm - p0.astype(np.float32)
        dist2 = (rel**2).sum(-1) - (rel @ d.astype(np.float32)) ** 2
        hu = np.where(lung, np.maximum(hu, -850.0 + 500.0 * np.exp(-dist2 / (2 * 0.8**2))), hu)
        vessels.append((p0 + np.asarray(origin), d))

    found: list[tuple[np.ndarray, float]] = []
    for _ in range(200):
        if len(found) >= nodules:
            break
        diameter = float(rng.uniform(6.0, 9.0))
        centre = lung_point()
        margin_z = diameter / 2 / sz + 1
        world = to_world(centre)
        if not margin_z <= centre[0] <= slices - 1 - margin_z or not far(
            world, found, diameter / 2 + 2
        ):
            continue
        found.append((world, diameter))
        dist = np.linalg.norm(grid_mm - (world - np.asarray(origin)).astype(np.float32), axis=-1)
        inside = np.clip((diameter / 2 - dist) / 0.7 + 0.5, 0, 1)
        hu = hu * (1 - inside) + float(rng.uniform(50, 100)) * inside
    hu += rng.normal(0, 10, hu.shape).astype(np.float32)
    if rng.random() < 0.5:  # outside the reconstruction circle, as many LUNA16 scans store
        hu[(xx - size / 2) ** 2 + (yy - size / 2) ** 2 > (size / 2) ** 2] = float(
            rng.choice([-2000, -3024])
        )
    volume = np.clip(np.rint(hu), -3024, 3071).astype(np.int16)

    positives = []
    for world, _diameter in found:
        for _ in range(int(rng.integers(1, 3))):
            jitter = rng.normal(0, 1, 3)
            positives.append(world + jitter / np.linalg.norm(jitter) * rng.uniform(0, 0.5))
    negatives: list[np.ndarray] = []
    for kind in ("vessel", "vessel", "vessel", "parenchyma", "parenchyma", "parenchyma"):
        for _ in range(200):
            if kind == "vessel":
                p, d = vessels[int(rng.integers(len(vessels)))]
                world = p + d * rng.uniform(-40, 40)
            else:
                world = to_world(lung_point())
            index = voxel_index(world_to_voxel(world, origin, spacing))[::-1]
            if not ((index >= 0).all() and (index < lung.shape).all() and lung[tuple(index)]):
                continue
            if not far(world, found, 3.0):
                continue
            if kind == "parenchyma" and any(
                np.linalg.norm(np.cross(world - p, d)) < 2.5 for p, d in vessels
            ):
                continue
            negatives.append(world)
            break
    return _Scan(volume, origin, spacing, found, positives, negatives)


def synth(
    out_dir: str | Path, cases: int = 10, seed: int = 0, size: int = 64, slices: int = 40
) -> dict[str, int]:
    """Write a LUNA16-layout dataset of ``cases`` scans (``size`` x ``size`` x ``slices``
    voxels) dealt over ``subset0 … subset9``, with ``annotations.csv`` and
    ``candidates_V2.csv`` in world millimetres. Deterministic in ``seed``. Returns counts
    written: scans, subsets, nodules, candidates, positives."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    annotations, candidates = [], []
    for i in range(cases):
        uid = _uid(rng)
        scan = synth_scan(rng, size, slices, nodules=NODULES_PER_SCAN[i % len(NODULES_PER_SCAN)])
        _write_mhd(out / f"subset{i % 10}" / f"{uid}.mhd", scan.volume, scan.origin, scan.spacing)
        for world, diameter in scan.nodules:
            annotations.append([uid, *np.round(world, 7), round(diameter, 8)])
        rows = [[uid, *np.round(w, 2), 1] for w in scan.positives]
        rows += [[uid, *np.round(w, 2), 0] for w in scan.negatives]
        candidates += [rows[j] for j in rng.permutation(len(rows))]
    pd.DataFrame(annotations, columns=list(ANNOTATION_COLUMNS)).to_csv(
        out / "annotations.csv", index=False
    )
    pd.DataFrame(candidates, columns=list(CANDIDATE_COLUMNS)).to_csv(
        out / "candidates_V2.csv", index=False
    )
    return {
        "scans": cases,
        "subsets": min(cases, 10),
        "nodules": len(annotations),
        "candidates": len(candidates),
        "positives": sum(r[-1] for r in candidates),
    }
