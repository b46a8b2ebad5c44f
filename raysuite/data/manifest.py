"""Parquet manifests: one row per sample, patient-level splits, nested label fractions.

Schema (``SCHEMA``; version ``SCHEMA_VERSION`` in the file's metadata):

=============== ============================ ==============================================
column          type                         meaning
=============== ============================ ==============================================
sample_id       string                       unique within the manifest (image id, case id,
                                             candidate id)
patient_key     string                       salted hash of the patient (``p_<16 hex>``);
                                             datasets without patient IDs key by study or
                                             series
study           string                       study key (salted when from a DICOM UID)
path            string                       image file, relative to the ingest root
modality        string                       CT, CR, DX, MR ...
height, width   int32                        stored image size (rows, columns)
depth           int32                        slices (1 for 2-D)
spacing         list<float32>                pixel/voxel spacing in mm, reader's axis order
labels          list<string>                 image-level findings; [] means normal
boxes           list<struct>                 ``label, x_min, y_min, x_max, y_max`` in pixels
                                             of the stored image, ``readers`` = how many
                                             annotators agreed (fused boxes)
mask            string (nullable)            mask reference: a relative file path, or
                                             ``rle:<counts>`` (SIIM convention)
source_split    string                       the dataset's own split (``train``, ``valid``)
split           string                       ``train``/``val``/``test`` (``unlabelled``
                                             and ``unused`` for methods that need them)
fold            int8                         cross-validation fold, -1 when unused
extra           string                       JSON of format-specific fields
=============== ============================ ==============================================

File metadata: ``raysuite.format``, ``raysuite.root`` (absolute), ``raysuite.schema`` and
``raysuite.hash``, a content hash over every column (used by the stage cache key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
BOX = pa.struct(
    [
        ("label", pa.string()),
        ("x_min", pa.float32()),
        ("y_min", pa.float32()),
        ("x_max", pa.float32()),
        ("y_max", pa.float32()),
        ("readers", pa.int16()),
    ]
)
SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("patient_key", pa.string()),
        ("study", pa.string()),
        ("path", pa.string()),
        ("modality", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("depth", pa.int32()),
        ("spacing", pa.list_(pa.float32())),
        ("labels", pa.list_(pa.string())),
        ("boxes", pa.list_(BOX)),
        ("mask", pa.string()),
        ("source_split", pa.string()),
        ("split", pa.string()),
        ("fold", pa.int8()),
        ("extra", pa.string()),
    ]
)
DEFAULTS: dict[str, Any] = {
    "study": "",
    "modality": "",
    "depth": 1,
    "spacing": [],
    "labels": [],
    "boxes": [],
    "mask": None,
    "source_split": "",
    "split": "",
    "fold": -1,
    "extra": "{}",
}


class ManifestError(ValueError):
    """A manifest that must not be used (patient leakage, missing columns...)."""


def frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts with at least sample_id, patient_key, path, height, width) as a frame
    with every schema column, defaults filled, sorted by sample_id."""
    filled = []
    for row in rows:
        unknown = set(row) - set(SCHEMA.names)
        if unknown:
            raise ManifestError(f"row {row.get('sample_id')!r} has columns outside the schema: {sorted(unknown)}")
        out = {name: row.get(name, DEFAULTS.get(name)) for name in SCHEMA.names}
        if isinstance(out["extra"], dict):
            out["extra"] = json.dumps(out["extra"], sort_keys=True)
        filled.append(out)
    df = pd.DataFrame(filled, columns=SCHEMA.names)
    df["mask"] = _nullable(df["mask"])
    if df.sample_id.duplicated().any():
        dup = df.sample_id[df.sample_id.duplicated()].iloc[0]
        raise ManifestError(f"sample_id {dup!r} appears twice")
    return df.sort_values("sample_id", ignore_index=True)


def _table(df: pd.DataFrame) -> pa.Table:
    columns = {}
    for name in SCHEMA.names:
        values = df[name].tolist()
        if name in ("spacing", "labels", "boxes"):
            values = [list(v) if v is not None else [] for v in values]
        elif name == "mask":
            values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]
        columns[name] = pa.array(values, type=SCHEMA.field(name).type)
    return pa.table(columns, schema=SCHEMA)


def content_hash(df: pd.DataFrame) -> str:
    """SHA-256 (16 hex) of every column of every row, order-independent of input order."""
    table = _table(df.sort_values("sample_id", ignore_index=True))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def write(df: pd.DataFrame, path: str | Path, fmt: str, root: str | Path) -> str:
    """Write ``df`` to ``path`` (atomically) with its metadata; returns the content hash."""
    check_patient_splits(df)
    digest = content_hash(df)
    table = _table(df.sort_values("sample_id", ignore_index=True))
    meta = {
        b"raysuite.format": fmt.encode(),
        b"raysuite.root": str(Path(root).resolve()).encode(),
        b"raysuite.schema": SCHEMA_VERSION.encode(),
        b"raysuite.hash": digest.encode(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table.replace_schema_metadata(meta), tmp)
    tmp.replace(path)
    return digest


def read(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A manifest and its metadata (format, root, schema, hash)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    table = pq.read_table(path)
    meta = {k.decode().removeprefix("raysuite."): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"raysuite.")}
    missing = [n for n in SCHEMA.names if n not in table.column_names]
    if missing or meta.get("schema") != SCHEMA_VERSION:
        raise ManifestError(f"{path}: not a raysuite manifest of schema {SCHEMA_VERSION} (missing {missing})")
    df = table.to_pandas()
    for name in ("spacing", "labels", "boxes"):
        df[name] = [list(v) for v in df[name]]
    df["mask"] = _nullable(df["mask"])
    return df, meta


def _nullable(values: Any) -> pd.Series:
    """An object column holding str or None (pandas would turn None into NaN)."""
    return pd.Series([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values], dtype=object)


# ---------------------------------------------------------------------------- splits


TRAINING_SIDE = ("train", "unlabelled", "unused")  # a patient may sit in several of these


def check_patient_splits(df: pd.DataFrame) -> None:
    """Refuse a manifest where one patient's samples sit in two evaluation partitions:
    ``val``, ``test`` and the training side (``train`` together with the ``unlabelled``
    pretraining pool and ``unused``, which may share patients), or in two folds."""
    partition = df.split.where(~df.split.isin(TRAINING_SIDE), "train")
    for column, values, unset in (("split", partition, ""), ("fold", df.fold, -1)):
        assigned = values != unset
        per_patient = values[assigned].groupby(df.patient_key[assigned]).nunique()
        leaked = per_patient[per_patient > 1]
        if len(leaked):
            example = leaked.index[0]
            found = sorted(map(str, df.loc[assigned & (df.patient_key == example), column].unique()))
            raise ManifestError(
                f"{len(leaked)} patient(s) appear in more than one {column}, e.g. {example} in {found}"
            )


def _patient_order(df: pd.DataFrame, seed: int) -> list[str]:
    patients = sorted(df.patient_key.unique())
    order = np.random.default_rng(seed).permutation(len(patients))
    return [patients[i] for i in order]


def assign_splits(df: pd.DataFrame, ratios: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
                  names: Sequence[str] = ("train", "val", "test")) -> pd.DataFrame:  # fmt: skip
    """Split by patient: a seeded shuffle of patients cut at the cumulative ``ratios`` of
    *samples* (so 70/10/20 holds for images, not only patients). Seeds 000/003: 70/10/20."""
    if len(ratios) != len(names) or abs(sum(ratios) - 1) > 1e-6 or min(ratios) < 0:
        raise ManifestError(f"split ratios {list(ratios)} must be {len(names)} non-negative numbers summing to 1")
    sizes = df.groupby("patient_key").size()
    bounds = np.cumsum(ratios) * len(df)
    split, done = {}, 0
    for patient in _patient_order(df, seed):
        k = int(np.searchsorted(bounds, done + sizes[patient] / 2, side="right"))
        split[patient] = names[min(k, len(names) - 1)]
        done += sizes[patient]
    out = df.copy()
    out["split"] = out.patient_key.map(split)
    return out


def assign_folds(df: pd.DataFrame, folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """K-fold cross-validation by patient (seed 002 uses 5 folds): patients shuffled with
    ``seed`` and dealt so each fold holds about 1/K of the samples."""
    if folds < 2:
        raise ManifestError(f"folds must be >= 2, got {folds}")
    sizes = df.groupby("patient_key").size()
    load = np.zeros(folds)
    fold = {}
    for patient in _patient_order(df, seed):
        k = int(np.argmin(load))
        fold[patient] = k
        load[k] += sizes[patient]
    out = df.copy()
    out["fold"] = out.patient_key.map(fold).astype(np.int8)
    return out


def fold_split(df: pd.DataFrame, fold: int) -> pd.DataFrame:
    """Train on the other folds, test on ``fold`` (the ``split`` column rewritten)."""
    if df.fold.min() < 0:
        raise ManifestError("manifest has no folds; assign_folds first")
    out = df.copy()
    out["split"] = np.where(out.fold == fold, "test", "train")
    return out


# ------------------------------------------------------------------- label fractions


def _stratum(labels: Sequence[str], frequency: dict[str, int]) -> str:
    """A sample's stratum: its rarest label (multi-label), or ``""`` when it has none."""
    return min(labels, key=lambda c: (frequency[c], c)) if len(labels) else ""


def labelled_mask(df: pd.DataFrame, fraction: float, seed: int = 0, stratify: bool = True) -> np.ndarray:
    """Boolean mask of the labelled subset: ``round(fraction * len(df))`` samples.

    Nested: for one ``seed`` the 10 % subset lies inside the 20 % one, and so on, because
    every fraction takes a prefix of one seeded order. Stratified by each sample's rarest
    label: within a stratum of n samples, shuffled with ``seed``, the i-th gets the key
    (i + u) / n (u uniform, one per stratum), and the global order sorts by key, so any
    prefix holds each stratum's share to within one sample. Different seeds give
    independent draws. The complement is the unlabelled pool (seed 000 pretrains on it).
    """
    if not 0 <= fraction <= 1:
        raise ManifestError(f"label fraction {fraction} outside [0, 1]")
    rng = np.random.default_rng(seed)
    frequency: dict[str, int] = {}
    if stratify:
        for labels in df.labels:
            for c in labels:
                frequency[c] = frequency.get(c, 0) + 1
    strata = np.asarray([_stratum(labels, frequency) if stratify else "" for labels in df.labels], dtype=object)
    ids = df.sample_id.to_numpy()
    keys = np.zeros(len(df))
    for stratum in sorted(set(strata)):
        idx = np.flatnonzero(strata == stratum)
        idx = idx[np.argsort(ids[idx], kind="stable")]  # independent of the input row order
        perm = idx[rng.permutation(len(idx))]
        keys[perm] = (np.arange(len(idx)) + rng.uniform()) / len(idx)
    order = np.lexsort((ids, keys))
    mask = np.zeros(len(df), bool)
    mask[order[: int(round(fraction * len(df)))]] = True
    return mask
