"""Synthetic datasets: one writer module per format of :mod:`raysuite.data.formats`.

A writer module defines ``synth(out_dir, cases=10, seed=0, ...) -> counts``: it writes
the format's exact published layout (files, CSV columns, encodings, made-up patient
identity in DICOM headers that ingest must drop) with learnable phantoms, so a method can
train and be checked on it, and returns the counts written. Deterministic in ``seed``
(VinDr-CXR's DICOM UIDs aside). The format modules know how to read a layout; these know
how to make one, and import the format's layout constants, never the other way round.

Shared helpers: :mod:`raysuite.data.synth.dicom_writer` writes single-frame DICOMs with
the tags real exports carry.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from raysuite.data.formats import NAMES


def get(name: str) -> ModuleType:
    """The synthetic writer module of format ``name`` (KeyError naming the known formats
    otherwise); call its ``synth(out_dir, cases=..., seed=...)``."""
    if name not in NAMES:
        raise KeyError(f"unknown data format {name!r}; known: {list(NAMES)}")
    return importlib.import_module(f"raysuite.data.synth.{name}")
