"""One module per public dataset: its published layout, ``ingest`` and preprocessing.

A format module defines ``NAME`` and ``ingest(root, ledger, workers)`` adding one manifest
row per readable sample to the :class:`~raysuite.data.ingest.Ledger` and one error row per
unreadable one. Each format's synthetic writer, ``synth(out_dir, cases=10, seed=0) ->
counts`` writing the exact published layout with learnable phantoms, is the module of the
same name in :mod:`raysuite.data.synth` (which imports the layout constants from here;
nothing here imports it).

``folder`` is not a public dataset but plain folders of DICOM / NIfTI / PNG / MHD files,
``ROOT/<patient folder>/**/<file>`` (a researcher's own collection, e.g. brain MRIs for
seed 002's pretraining pool); its synthetic writer makes T1-like brain MRIs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("vindr_cxr", "siim_acr", "chestxray14", "flare22", "luna16", "mura", "folder")


def get(name: str) -> ModuleType:
    """The format module ``name`` (KeyError naming the known formats otherwise)."""
    if name not in NAMES:
        raise KeyError(f"unknown data format {name!r}; known: {list(NAMES)}")
    return importlib.import_module(f"raysuite.data.formats.{name}")
