"""YAML's ``true`` and ``false`` are no numbers: pydantic's lax mode reads ``epochs: true``
as 1 and ``lr: false`` as 0.0. :func:`bool_for_number` finds such a value before a spec
section or stage config is validated (strict mode would also refuse YAML lists for tuples)."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from raysuite.pydantic_types import is_model, members

Loc = tuple[str | int, ...]


def _admits_bool(member: Any) -> bool:
    if get_origin(member) is Literal:
        return any(isinstance(a, bool) for a in get_args(member))
    return member in (bool, Any, object)


def _refuses_bool(annotation: Any) -> bool:
    """A number is wanted (int or float) and a boolean is not."""
    types_ = members(annotation)
    return not any(map(_admits_bool, types_)) and any(m in (int, float) for m in types_)


def _items(annotation: Any, value: Any) -> list[tuple[Any, Any, str | int]] | None:
    """(annotation, value, key) of each part of ``value`` when ``annotation`` describes a
    container of its shape, else None."""
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(value, dict):
        if is_model(annotation):
            fields = annotation.model_fields
            if not set(value) <= set(fields):  # another member of a union (or an unknown key)
                return None
            return [(fields[k].annotation, v, k) for k, v in value.items()]
        if origin is dict and args:
            return [(args[1], v, k) for k, v in value.items()]
        return None
    if isinstance(value, list | tuple):
        if origin in (list, set, frozenset) and args:
            return [(args[0], v, i) for i, v in enumerate(value)]
        if origin is tuple and args:
            positions = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
            return [(t, v, i) for i, (t, v) in enumerate(zip(positions, value, strict=False))]
    return None


def bool_for_number(annotation: Any, value: Any, loc: Loc = ()) -> Loc | None:
    """Where in ``value`` a boolean stands for an int or float field of ``annotation`` (a
    model, or a type such as ``dict[str, float]``), or None. Under a union, a container is
    refused only when every member of its shape refuses it."""
    if isinstance(value, bool):
        return loc if _refuses_bool(annotation) else None
    found = []
    for member in members(annotation):
        items = _items(member, value)
        if items is not None:
            where = next((w for a, v, k in items if (w := bool_for_number(a, v, (*loc, k))) is not None), None)
            if where is None:
                return None
            found.append(where)
    return found[0] if found else None


def loc_text(loc: Loc) -> str:
    """``("stages", "pretrain", "iou_interval", 0)`` -> ``stages.pretrain.iou_interval[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
