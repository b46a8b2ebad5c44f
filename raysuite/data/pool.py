"""The multi-source 2-D pretraining pool of seed 002 (Song 2020, §3.1.3-3.1.10).

The seed pretrains on 2-D slices of 17 datasets mixing CT, MRI and X-ray. Its sampling is
per patient: every patient is kept, and each dataset gets a number of slices per patient
(MRNet 81, colon 80, liver 100, ChestX-ray14 20, small datasets all; §3.1.5). The
per-patient slices are spread evenly over the patient's images, so a 600-slice scan cut to
300 keeps every other slice. The caps are chosen so that the modalities come out balanced
(MRI 167 179, CT 155 105, X-ray 134 720; §3.1.6). The split is 90/5/5 by patient (§3.1.7).

Here a pool is a list of :class:`Source` (an ingested manifest of any format, plus a
declared modality and body part where the manifest has none). :func:`build_pool` does
three things:

1. It expands every file into its axial slices.
2. It applies each source's ``slices_per_patient`` and ``max_patients`` caps.
3. It applies optional per-modality totals (``modality_caps``). These are met exactly by
   water-filling: every patient gets ``min(n_p, k)`` slices with the largest level ``k``
   that fits, and the remainder goes one slice each to seeded patients. Patients are cut
   fairly and none is dropped while the cap allows one slice each.

:func:`modality_totals` gives the counts behind the seed's Figures 3.2-3.7.

Intensities (:func:`normalise`) map every slice to [0, 1] by modality:

- CT: HU clipped to [-1000, 1400] and scaled (§3.1.8.1; values above 1400 are artefacts).
- MRI: divided by the slice's maximum (§3.1.9, ``mri: max``). ``mri: percentile`` divides
  by the 99.5th percentile and clips instead, so one hot voxel does not darken the slice.
- X-ray and mammography: 8-bit PNGs divided by 255 (§3.1.10); other sources (12-16-bit
  DICOM or PNG) scaled per image by min-max.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pandas as pd

from raysuite.data import intensity, manifest

CT_BOUNDS = (-1000.0, 1400.0)  # §3.1.8.1 MIN_BOUND, MAX_BOUND
MRI_PERCENTILE = 99.5
SPLIT = (0.9, 0.05, 0.05)  # §3.1.7
GROUPS = ("CT", "MRI", "XRAY", "MG")
_GROUP_OF = {"CT": "CT", "MR": "MRI", "MRI": "MRI", "CR": "XRAY", "DX": "XRAY", "DR": "XRAY", "XR": "XRAY",
             "RG": "XRAY", "XRAY": "XRAY", "X-RAY": "XRAY", "MG": "MG"}  # fmt: skip
# Body part of a format's slices when neither the manifest nor the source names one.
FORMAT_BODY_PART = {"chestxray14": "CHEST", "vindr_cxr": "CHEST", "siim_acr": "CHEST", "flare22": "ABDOMEN",
                    "luna16": "LUNG"}  # fmt: skip
# The modality of a format whose manifest leaves it empty (ChestX-ray14 PNGs: radiographs).
FORMAT_MODALITY = {"chestxray14": "DX", "mura": "XR", "luna16": "CT", "flare22": "CT"}


class PoolError(ValueError):
    """A source that cannot join the pool (unknown modality, empty manifest)."""


def modality_group(modality: str) -> str:
    """DICOM-style modality (CT, MR, CR, DX, MG …) -> pool group CT | MRI | XRAY | MG."""
    group = _GROUP_OF.get(modality.strip().upper())
    if group is None:
        raise PoolError(f"modality {modality!r} is not one of {sorted(_GROUP_OF)}")
    return group


@dataclass(frozen=True)
class Source:
    """One ingested dataset in the pool: its manifest rows and root, what to sample.

    ``modality`` / ``body_part`` override the manifest's (plain folders of NIfTI or PNG
    have none). ``slices_per_patient`` None keeps all of a patient's slices; ``max_patients``
    None keeps every patient (the seed keeps every patient of every dataset)."""

    name: str
    format: str
    root: str
    rows: pd.DataFrame
    modality: str | None = None
    body_part: str | None = None
    slices_per_patient: int | None = None
    max_patients: int | None = None


def _body_part(source: Source, row: pd.Series) -> str:
    if source.body_part:
        return source.body_part.upper()
    if source.format == "mura":  # MURA-v1.1/train/XR_SHOULDER/patient…/…
        return next((p for p in str(row.path).split("/") if p.startswith("XR_")), "UNKNOWN")
    return FORMAT_BODY_PART.get(source.format, "UNKNOWN")


def _group(source: Source, modality: str) -> str:
    chosen = source.modality or modality or FORMAT_MODALITY.get(source.format, "")
    if not chosen:
        raise PoolError(
            f"source {source.name!r}: files without a modality; declare the source's modality"
        )
    try:
        return modality_group(chosen)
    except PoolError as err:
        raise PoolError(f"source {source.name!r}: {err}") from None


def evenly(n: int, m: int) -> np.ndarray:
    """``m`` of ``range(n)`` spread evenly, first and last included (all when m >= n)."""
    if m >= n:
        return np.arange(n)
    if m <= 0:
        return np.arange(0)
    if m == 1:
        return np.array([n // 2])
    return np.unique(np.round(np.linspace(0, n - 1, m)).astype(int))


def source_slices(source: Source, seed: int = 0) -> pd.DataFrame:
    """One row per kept slice of ``source``: ``source, sample_id, path, slice, patient_key,
    group, body_part, pool_id``. Rows sharing a file (LUNA16's candidates) count once; a
    patient's slices are ordered by file and slice and cut evenly to ``slices_per_patient``."""
    files = source.rows.drop_duplicates("path").sort_values("path")
    if files.empty:
        raise PoolError(f"source {source.name!r}: its manifest has no readable sample")
    patients = sorted(files.patient_key.unique())
    if source.max_patients is not None and source.max_patients < len(patients):
        keep = np.random.default_rng(seed).choice(len(patients), source.max_patients, replace=False)
        patients = [patients[i] for i in sorted(keep)]
    files = files[files.patient_key.isin(set(patients))]
    out = []
    for patient, group in files.groupby("patient_key", sort=True):
        slices = [(r, k) for r in group.itertuples() for k in range(max(1, int(r.depth)))]
        cap = source.slices_per_patient if source.slices_per_patient is not None else len(slices)
        for i in evenly(len(slices), cap):
            r, k = slices[i]
            out.append({
                "source": source.name, "sample_id": r.sample_id, "path": r.path, "slice": k,
                "patient_key": f"{source.name}:{patient}", "group": _group(source, r.modality),
                "body_part": _body_part(source, r),
            })  # fmt: skip
    frame = pd.DataFrame(out)
    frame["pool_id"] = [
        f"{s}/{p}#{k:05d}" for s, p, k in zip(frame.source, frame.path, frame.slice, strict=True)
    ]
    return frame


def water_fill(counts: Sequence[int], cap: int, rng: np.random.Generator) -> np.ndarray:
    """Per-patient slice counts whose total is ``min(cap, sum(counts))``: every patient gets
    ``min(n_p, k)`` for the largest level ``k`` that fits, and the remainder goes one slice
    each to patients (drawn with ``rng``) that still have slices above ``k``."""
    n = np.asarray(counts, dtype=int)
    if cap >= n.sum():
        return n.copy()
    lo, hi = 0, int(n.max())
    while lo < hi:  # largest k with sum(min(n, k)) <= cap
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(n, mid).sum() <= cap else (lo, mid - 1)
    out = np.minimum(n, lo)
    rest = cap - int(out.sum())
    eligible = np.flatnonzero(n > lo)
    out[rng.choice(eligible, rest, replace=False)] += 1
    return out


def balance(pool: pd.DataFrame, caps: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Cut each modality group of ``pool`` (rows of :func:`source_slices`) to ``caps[group]``
    slices by :func:`water_fill` over its patients, each patient's slices cut evenly."""
    unknown = sorted(set(caps) - set(GROUPS))
    if unknown:
        raise PoolError(f"modality caps {unknown} name no group; groups: {list(GROUPS)}")
    rng = np.random.default_rng(seed)
    parts = []
    for key, rows in pool.groupby("group", sort=True):
        group = cast(str, key)  # the modality group's name
        if group not in caps:
            parts.append(rows)
            continue
        by_patient = [g for _, g in rows.groupby("patient_key", sort=True)]
        kept = water_fill([len(g) for g in by_patient], caps[group], rng)
        parts += [g.iloc[evenly(len(g), m)] for g, m in zip(by_patient, kept, strict=True) if m]
    return pd.concat(parts, ignore_index=True) if parts else pool.iloc[:0]


def build_pool(sources: Sequence[Source], caps: dict[str, int] | None = None, seed: int = 0,
               split: tuple[float, float, float] = SPLIT) -> pd.DataFrame:  # fmt: skip
    """The pretraining pool: :func:`source_slices` of every source, :func:`balance` to the
    modality ``caps``, then ``split`` (train/val/test) by patient, sorted by ``pool_id``."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise PoolError(f"source names repeat: {names}")
    if not sources:
        raise PoolError("the pool names no source")
    pool = pd.concat([source_slices(s, seed) for s in sources], ignore_index=True)
    pool = balance(pool, caps or {}, seed)
    pool = manifest.assign_splits(pool, split, seed)
    return pool.sort_values("pool_id", ignore_index=True)


def pool_hash(
    sources: Sequence[Source],
    caps: dict[str, int] | None,
    seed: int,
    manifest_hashes: Sequence[str],
) -> str:
    """Content key of a pool: its sources' manifests, sampling settings and seed."""
    blob = json.dumps({
        "sources": [[s.name, s.format, s.modality, s.body_part, s.slices_per_patient, s.max_patients, h]
                    for s, h in zip(sources, manifest_hashes, strict=True)],
        "caps": caps or {}, "seed": seed,
    }, sort_keys=True)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def modality_totals(pool: pd.DataFrame) -> pd.DataFrame:
    """Slices and patients per (group, body part, source) and per group (``body_part`` =
    ``all``), the seed's Figures 3.2-3.7, with the split's slice counts."""
    keys = ["group", "body_part", "source"]
    detail = (
        pool.groupby(keys)
        .agg(slices=("pool_id", "size"), patients=("patient_key", "nunique"))
        .reset_index()
    )
    total = (
        pool.groupby("group")
        .agg(slices=("pool_id", "size"), patients=("patient_key", "nunique"))
        .reset_index()
    )
    total["body_part"], total["source"] = "all", "all"
    splits = pool.pivot_table(
        index="group", columns="split", values="pool_id", aggfunc="size", fill_value=0
    )
    total = total.merge(splits.reset_index(), on="group", how="left")
    table = pd.concat([total, detail], ignore_index=True)
    return table.loc[:, keys + ["slices", "patients", *splits.columns]]


def normalise(
    image: np.ndarray, group: str, png8: bool, mri: Literal["max", "percentile"] = "max"
) -> np.ndarray:
    """``(H, W)`` slice in source units -> ``(H, W)`` float32 in [0, 1] by modality group
    (see the module docstring; ``png8``: the source is an 8-bit PNG)."""
    image = np.asarray(image, np.float32)
    if group == "CT":
        lo, hi = CT_BOUNDS
        return np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32)
    if group == "MRI":
        image = np.maximum(image, 0)
        top = float(np.percentile(image, MRI_PERCENTILE) if mri == "percentile" else image.max())
        return np.clip(image / top, 0, 1).astype(np.float32) if top > 0 else np.zeros_like(image)
    if png8 and image.max() <= 255:
        return np.clip(image / 255.0, 0, 1).astype(np.float32)
    return intensity.minmax(image)


def square(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` -> ``(size, size)``: zero-padded to a centred square (the seed pads MURA,
    §3.1.10), then resized (area filter when shrinking)."""
    h, w = image.shape
    side = max(h, w)
    out = np.zeros((side, side), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = image
    return intensity.resize(out, size, "area" if side > size else "bilinear")


def is_png8(path: str | Path) -> bool:
    return str(path).lower().endswith(".png")
