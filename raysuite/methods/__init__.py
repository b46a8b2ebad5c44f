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


def module_of(name: str) -> str:
    """The module of method ``name``: a registered name, or an import path
    ``package.module:ATTR`` (a method of your own; its module must be importable on every
    node). Raises KeyError for neither."""
    if name in MODULES:
        return MODULES[name]
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr.isidentifier():
        raise KeyError(name)
    return module


class _Registry(Mapping[str, "Method"]):
    """Read-only mapping name -> :class:`Method`, importing a method's module when asked.
    It lists the registered methods; an import path ``module:ATTR`` is looked up too."""

    def __getitem__(self, name: str) -> Method:
        from raysuite.methods.base import Method

        module = module_of(name)
        try:
            found = getattr(importlib.import_module(module), name.partition(":")[2] or "METHOD")
        except (ImportError, AttributeError) as err:
            raise KeyError(name) from err
        if not isinstance(found, Method):
            raise KeyError(name)
        return found

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(MODULES)

    def __len__(self) -> int:
        return len(MODULES)


METHODS: Mapping[str, Method] = _Registry()
