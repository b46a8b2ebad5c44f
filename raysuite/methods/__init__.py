"""Registry of methods: the five built-in ones (one module per seed paper), the methods
installed packages register, and any method named by its import path.

``METHODS[name]`` finds a method three ways, in this order:

1. a built-in name (:data:`MODULES`);
2. an import path ``package.module:ATTR`` (a method of your own; its module must be
   importable on every node: installed, or on ``PYTHONPATH``);
3. the name of an entry point in the group :data:`GROUP` (``raysuite.methods``), whose
   value is such an import path. A package registers its method in its
   ``pyproject.toml``::

       [project.entry-points."raysuite.methods"]
       lesion_demo = "lesion_demo.method:METHOD"

   Entry points are read from the ``*.dist-info`` / ``*.egg-info`` folders on ``sys.path``
   (:func:`importlib.metadata.entry_points`), so an installed package and a folder on
   ``PYTHONPATH`` holding such metadata (what ``raysuite new method`` writes) are found alike.
   A built-in name always wins over an entry point of the same name.

Iterating ``METHODS`` lists the built-ins, then the entry points. A method's module is
imported on first use: a Ray worker training one method does not pay for the others'
imports (timm, MONAI, torchvision detection, SciPy: ~2.5 s per process, and a trial starts
two or three); listing the names imports nothing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # base imports the epoch loop, which imports methods.nn: keep this light
    from raysuite.methods.base import Method

GROUP = "raysuite.methods"  # the entry-point group installed packages register methods in

MODULES = {
    "iou_simsiam_seg": "raysuite.methods.iou_simsiam_seg",
    "simclr_detection": "raysuite.methods.simclr_detection",
    "one_case_cascade": "raysuite.methods.one_case_cascade",
    "weak_localization": "raysuite.methods.weak_localization",
    "genesis_cls": "raysuite.methods.genesis_cls",
}


class UnknownMethod(KeyError):
    """``METHODS[name]`` found no method: the message says why (unknown name, an import path
    or entry point that does not load, or an object that is not a :class:`Method`); the
    import error, when there is one, is the exception's ``__cause__``."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a key
        return str(self.args[0]) if self.args else ""


_SCANNED: dict[tuple[str, ...], dict[str, list[importlib.metadata.EntryPoint]]] = {}


def entry_points() -> dict[str, list[importlib.metadata.EntryPoint]]:
    """Entry points of group :data:`GROUP` on today's ``sys.path``, by name, in the order
    :mod:`importlib.metadata` finds them (one per distribution; a distribution on two
    ``sys.path`` folders counts once, the first). A name registered by two distributions
    lists both; looking it up then fails unless they agree on the value."""
    key = tuple(sys.path)
    if key not in _SCANNED:
        found: dict[str, list[importlib.metadata.EntryPoint]] = {}
        for ep in importlib.metadata.entry_points(group=GROUP):
            found.setdefault(ep.name, []).append(ep)
        _SCANNED.clear()
        _SCANNED[key] = found
    return _SCANNED[key]


def _origin(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    where = f", distribution {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name!r} = {ep.value!r} (group {GROUP}{where})"


def entry_point(name: str) -> importlib.metadata.EntryPoint | None:
    """The entry point registering method ``name`` (None if none does, or ``name`` is a
    built-in, which wins). Two distributions registering ``name`` with different values is
    an :class:`UnknownMethod` naming both."""
    if name in MODULES:
        return None
    eps = entry_points().get(name, [])
    if len({ep.value for ep in eps}) > 1:
        raise UnknownMethod(f"method {name!r} is registered twice: " + "; ".join(_origin(ep) for ep in eps))
    return eps[0] if eps else None


def _import_path(name: str) -> tuple[str, str] | None:
    """``package.module:ATTR`` -> (module, ATTR); None when ``name`` is not of that form."""
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr.isidentifier():
        return None
    if not all(part.isidentifier() for part in module.split(".")):
        return None
    return module, attr


def module_of(name: str) -> str:
    """The module of method ``name``: a built-in name, an import path ``package.module:ATTR``
    or a registered entry point's value. Raises :class:`UnknownMethod` (a KeyError) for none."""
    if name in MODULES:
        return MODULES[name]
    path = _import_path(name)
    if path is not None:
        return path[0]
    ep = entry_point(name)
    if ep is not None:
        path = _import_path(ep.value)
        if path is None:
            raise UnknownMethod(f"{_origin(ep)}: the value is not of the form package.module:ATTR")
        return path[0]
    raise UnknownMethod(f"unknown method {name!r}")


def _load(name: str) -> Method:
    from raysuite.methods.base import Method

    if name in MODULES:
        found: object = importlib.import_module(MODULES[name]).METHOD
        origin = f"built-in method {name!r}"
    elif (path := _import_path(name)) is not None:
        origin = f"method {name!r}"
        try:
            found = getattr(importlib.import_module(path[0]), path[1])
        except Exception as err:  # noqa: BLE001 - any failure of the user's module: name it
            raise UnknownMethod(f"{origin} cannot be loaded: {type(err).__name__}: {err}") from err
    elif (ep := entry_point(name)) is not None:
        origin = _origin(ep)
        module_of(name)  # the value's form
        try:
            found = ep.load()
        except Exception as err:  # noqa: BLE001 - any failure of a third-party import: name it
            raise UnknownMethod(f"{origin} cannot be loaded: {type(err).__name__}: {err}") from err
    else:
        raise UnknownMethod(f"unknown method {name!r}")
    if not isinstance(found, Method):
        raise UnknownMethod(f"{origin} is a {type(found).__name__}, not a raysuite Method")
    if name not in MODULES and _import_path(name) is None and found.name != name:
        raise UnknownMethod(f"{origin} is the method named {found.name!r}: an entry point's name is its method's name")
    return found


class _Registry(Mapping[str, "Method"]):
    """Read-only mapping name -> :class:`Method`, importing a method's module when asked.
    It lists the built-in methods and the entry points; an import path ``module:ATTR`` is
    looked up too. A failed lookup raises :class:`UnknownMethod` (a KeyError) saying why."""

    def __getitem__(self, name: str) -> Method:
        if not isinstance(name, str):
            raise UnknownMethod(f"a method name is a string, not {type(name).__name__}")
        return _load(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        yield from MODULES
        yield from (name for name in entry_points() if name not in MODULES)

    def __len__(self) -> int:
        return len(MODULES) + sum(1 for name in entry_points() if name not in MODULES)


METHODS: Mapping[str, Method] = _Registry()
