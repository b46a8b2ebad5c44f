"""A fingerprint of the code that computes a method's stages: the source of the method's
module and of every module of raysuite or of the method's own top-level package (a method
of your own: ``my_pkg.method`` follows ``my_pkg.losses``) it imports, directly or not (read
from the files, by their ``import`` statements, without importing raysuite's). A bug fix anywhere in that code
changes the fingerprint, so the stage cache never serves an output computed before it; an
edit elsewhere (the report, the CLI, another method) does not."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from pathlib import Path

PACKAGE = "raysuite"


ROOT = Path(__file__).resolve().parent


def _source(module: str) -> Path | None:
    """The file of ``module`` (None: no such module, e.g. a class name). A raysuite module is
    found without importing anything; another (a method by import path) through its spec."""
    if module.split(".")[0] != PACKAGE:
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):  # ``pkg.module.function``: a name, not a module
            return None
        return Path(found.origin) if found is not None and found.origin else None
    parts = module.split(".")[1:]
    base = ROOT.joinpath(*parts)
    for path in (base / "__init__.py", base.with_suffix(".py") if parts else None):
        if path is not None and path.is_file():
            return path
    return None


def _imports(module: str, path: Path, packages: frozenset[str]) -> set[str]:
    """Modules of ``packages`` that ``module`` (at ``path``) names in its import statements,
    the packages of a dotted name included (their ``__init__`` runs too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if parts[0] in packages)
    return out


@functools.cache
def modules_of(module: str) -> tuple[str, ...]:
    """``module`` and every module of raysuite or of ``module``'s top-level package it
    imports, transitively, sorted."""
    packages = frozenset({PACKAGE, module.split(".")[0]})
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _source(name)
        if path is None:  # a name imported from a module (a class, a function), not a module
            continue
        seen.add(name)
        todo.extend(_imports(name, path, packages) - seen)
    return tuple(sorted(seen))


@functools.cache
def fingerprint(module: str) -> str:
    """sha256 over the sources of :func:`modules_of` ``module`` (names and text)."""
    digest = hashlib.sha256()
    for name in modules_of(module):
        path = _source(name)
        assert path is not None
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
