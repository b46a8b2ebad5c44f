"""Registry of methods: one module per seed paper.

``METHODS`` maps a method name to its module and imports that module on first use: a
Ray worker training one method does not pay for the other four's imports (timm, MONAI,
torchvision detection, SciPy: ~2.5 s per process, and a trial starts two or three).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # base imports the epoch loop, which imports methods.nn: keep this light
    from raysuite.methods.base import Method

MODULES = {
    "iou_simsiam_seg": "raysuite.methods.iou_simsiam_seg",
    "simclr_detection": "raysuite.methods.simclr_detection",
    "one_case_cascade": "raysuite.methods.one_case_cascade",
    "weak_localization": "raysuite.methods.weak_localization",
    "genesis_cls": "raysuite.methods.genesis_cls",
}


class _Registry(Mapping[str, "Method"]):
    """Read-only mapping name -> :class:`Method`, importing a method's module when asked."""

    def __getitem__(self, name: str) -> Method:
        return importlib.import_module(MODULES[name]).METHOD

    def __iter__(self) -> Iterator[str]:
        return iter(MODULES)

    def __len__(self) -> int:
        return len(MODULES)


METHODS: Mapping[str, Method] = _Registry()
