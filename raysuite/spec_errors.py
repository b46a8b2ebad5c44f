"""Spec errors: :class:`SpecError` (file, key path, message) and the phrasing of pydantic's
validation errors as one, an unknown key named with the closest valid one."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from raysuite.pydantic_types import is_model, members


class SpecError(ValueError):
    """Bad sweep spec: carries the file and the dotted key path at fault."""

    def __init__(self, path: str | os.PathLike | None, key: str, message: str):
        self.path = str(path) if path is not None else "<spec>"
        self.key = key
        self.message = message
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {message}")


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``: did you mean `x`?`` naming the option closest to ``word``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f": did you mean `{close[0]}`?" if close else ""


def validation_error(err: ValidationError, model: type[BaseModel], path: Any, prefix: str = "") -> SpecError:
    """The first problem of ``err`` (raised validating ``model``) as a :class:`SpecError` whose
    key is ``prefix`` and the problem's key path. An unknown key wins over the other problems
    (``methd:`` is reported as itself, not as ``method`` missing), named with the valid key
    closest to it."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    parts, _ = _walk(model, tuple(first["loc"]))
    key = ".".join(p for p in [prefix, *parts] if p)
    if first["type"] == "extra_forbidden":
        _, names = _walk(model, tuple(first["loc"])[:-1])
        return SpecError(path, key, f"unknown key `{parts[-1]}`{did_you_mean(parts[-1], names)}")
    if first["type"] == "union_tag_invalid":  # a discriminated union keyed by its one key
        ctx = first.get("ctx", {})  # pydantic always sets it for this error type
        tag, expected = ctx["tag"], re.findall(r"'([^']*)'", ctx["expected_tags"])
        if tag:
            return SpecError(path, key, f"unknown key `{tag}`{did_you_mean(tag, expected)}")
        return SpecError(path, key, f"expects exactly one key of {', '.join(expected)}")
    return SpecError(path, key, first["msg"])


def _child(annotation: Any, part: Any) -> Any:
    """The annotation of key or index ``part`` inside a value of ``annotation`` (None: none)."""
    if is_model(annotation):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict and args:
        return args[1]
    if origin in (list, set, frozenset) and args:
        return args[0]
    if origin is tuple and args:
        return args[0] if args[-1] is Ellipsis or not isinstance(part, int) else args[min(part, len(args) - 1)]
    return None


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], set[str]]:
    """Pydantic's ``loc`` under ``model`` as key path parts (its ``function-...`` parts and
    the member tag it adds under a union dropped), and the keys valid where it ends."""
    current: list[Any] = [model]
    parts: list[str] = []
    tagged = False
    for part in loc:
        if str(part).startswith(("function-", "tagged-union")):
            continue
        options = [m for annotation in current for m in members(annotation) if m is not type(None)]
        if len(options) > 1 and not tagged:  # a union: pydantic names the member first (class, tag or type)
            chosen = [m for m in options if getattr(m, "__name__", None) == part or (is_model(m) and part in m.model_fields)]
            current, tagged = chosen or options, True
            continue
        tagged = False
        parts.append(str(part))
        current = [c for c in (_child(m, part) for m in options) if c is not None]
    names = {name for annotation in current for m in members(annotation) if is_model(m) for name in m.model_fields}
    return parts, names
