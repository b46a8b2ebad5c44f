"""What a pydantic field annotation admits: its member types (unions flattened), and
whether a type is a pydantic model. Shared by the spec's error phrasing and checks."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel


def members(annotation: Any) -> list[Any]:
    """The types ``annotation`` admits: ``Annotated`` unwrapped, unions flattened (None kept)."""
    if get_origin(annotation) is Annotated:
        return members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in members(arg)]
    return [annotation]


def is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
