"""What ``raysuite methods`` prints: one summary per method, and a method's card.

A card holds everything a spec is written from, read from the method itself: per stage its
kind (training or job, what it consumes, whether it is cached), each config field with its
type, constraints, default and meaning, the metric keys it reports; the headline metric,
the baseline arm, the post-hoc knobs and the departures from the seed.

A field's meaning is its pydantic ``Field(description=...)``, else the comment written
beside (or just above) the field in the config class's source, else nothing. Nested config
models are listed field by field under dotted names (``transforms.flip_rate``), as a spec
sets them.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from raysuite.methods import MODULES, entry_point
from raysuite.methods.base import LOOP_KEYS, Method, StageDef
from raysuite.spec import SOURCE_FORMATS, SOURCES

WIDTH = 100
_PRAGMA = re.compile(r"\s*(?:fmt:\s*(?:skip|off|on)|noqa\b[^#]*|type:\s*ignore\S*|pyright:\s*\S+)\s*")
_CONSTRAINTS = (
    ("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="),
    ("multiple_of", "multiple of"), ("min_length", "min length"), ("max_length", "max length"),
)  # fmt: skip


@dataclass(frozen=True)
class FieldRow:
    """One settable key of a stage config: ``name`` (dotted for a nested model's field),
    ``type`` and ``default`` as a spec writes them, ``meaning`` ("" when none is given)."""

    name: str
    type: str
    default: str
    meaning: str


# ------------------------------------------------------------------------- fields


def type_name(annotation: Any) -> str:
    """A field's annotation as a spec writer reads it: ``int``, ``float | null``,
    ``"seed" | "li"``, ``dict[str, float]``, ``list[tuple[float, float]]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is None or annotation is type(None):
        return "null"
    if annotation is Ellipsis:
        return "..."
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", str(annotation))


def constraints(info: FieldInfo) -> str:
    """``info``'s bounds as text (``>= 1, < 1``), "" for none."""
    out = []
    for meta in info.metadata:
        for attr, symbol in _CONSTRAINTS:
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{symbol} {value}")
    return ", ".join(out)


def _value(value: Any) -> str:
    """A default as YAML flow text (``null``, ``true``, ``[0.3, 0.6]``, ``{}``)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def default_of(info: FieldInfo) -> str:
    """``info``'s default as text; ``(required)`` for a field without one."""
    if info.default_factory is not None:
        try:
            return _value(info.default_factory())  # type: ignore[call-arg]
        except TypeError:  # a factory taking the validated data
            return "(computed)"
    if info.default is PydanticUndefined:
        return "(required)"
    return _value(info.default)


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment of its line in ``cls``'s own source (the text after ``#`` on
    the field's lines, else the comment lines right above it); {} when the source cannot be
    read (a class built at run time)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    trailing: dict[int, str] = {}
    above: dict[int, str] = {}
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = _PRAGMA.sub(" ", tok.string.lstrip("#")).strip()
            line = tok.start[0]
            (above if tok.line.strip().startswith("#") else trailing)[line] = text
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    out: dict[str, str] = {}
    for stmt in node.body if node is not None else []:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        end = stmt.end_lineno or stmt.lineno
        text = [trailing[n] for n in range(stmt.lineno, end + 1) if trailing.get(n)]
        if not text:
            line, block = stmt.lineno - 1, []
            while line in above:
                block.insert(0, above[line])
                line -= 1
            text = [t for t in block if t]
        if text:
            out[stmt.target.id] = " ".join(text)
    return out


def _meanings(model: type[BaseModel]) -> dict[str, str]:
    """Comments of every field of ``model`` and its bases (the subclass's own comment wins)."""
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
            out.update(_comments(cls))
    return out


def _inherited_description(model: type[BaseModel], name: str) -> str:
    """The ``Field(description)`` a base of ``model`` gives field ``name`` (a method's config
    redeclares ``epochs`` with its seed's default; ``OptimConfig`` says what it means)."""
    for cls in model.__mro__[1:]:
        inherits = isinstance(cls, type) and issubclass(cls, BaseModel) and name in cls.model_fields
        if inherits and (described := cls.model_fields[name].description):
            return described
    return ""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model ``annotation`` is (``X`` or ``X | None``), else None."""
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    models = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 and all(a is type(None) or a in models for a in options) else None


def field_rows(model: type[BaseModel], prefix: str = "") -> list[FieldRow]:
    """Every settable key of ``model`` in declaration order, a nested model's fields after
    it under ``<field>.<sub>``."""
    comments = _meanings(model)
    rows = []
    for name, info in model.model_fields.items():
        kind = type_name(info.annotation)
        bounds = constraints(info)
        meaning = (info.description or comments.get(name) or _inherited_description(model, name)).strip()
        nested = _model_of(info.annotation)
        default = f"(the defaults of its fields, {prefix}{name}.<field> below)" if nested else default_of(info)
        rows.append(FieldRow(prefix + name, f"{kind}, {bounds}" if bounds else kind, default, meaning))
        if nested is not None:
            rows += field_rows(nested, f"{prefix}{name}.")
    return rows


# ------------------------------------------------------------------------- stages


def stage_kind(stage: StageDef) -> str:
    """``training`` or ``job (in a Train worker | in the trial driver)``, what it consumes,
    whether its output is cached and shared by the folds."""
    kind = "training (the epoch loop, DDP workers)" if stage.recipe is not None else (
        "job (one Ray Train worker)" if stage.job_on == "worker" else "job (the trial's driver)"
    )  # fmt: skip
    parts = [kind, f"consumes {', '.join(stage.inputs)}" if stage.inputs else "consumes nothing"]
    parts.append("cacheable (stage cache, content hash)" if stage.cacheable else "not cached")
    if stage.cacheable and not stage.per_fold:
        parts.append("shared by every fold")
    return "; ".join(parts)


def stage_metric_keys(method: Method, name: str) -> list[str]:
    """The keys stage ``name`` reports: the loop's own (a training stage) and its declared ones."""
    stage = method.stages[name]
    loop = [f"{name}/{key}" for key in LOOP_KEYS] if stage.recipe is not None else []
    return list(dict.fromkeys([*loop, *method.metrics.get(name, ())]))


def collapse(keys: Sequence[str], at_least: int = 4) -> list[str]:
    """``keys`` with each family ``a/b/<item>`` of ``at_least`` or more members (per-class
    metrics) written once as ``a/b/* (N keys)``, in first-seen order."""
    families: dict[str, int] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 3:
            families["/".join(parts[:2])] = families.get("/".join(parts[:2]), 0) + 1
    out: list[str] = []
    for key in keys:
        parts = key.split("/")
        family = "/".join(parts[:2])
        if len(parts) >= 3 and families.get(family, 0) >= at_least:
            label = f"{family}/* ({families[family]} keys)"
            if label not in out:
                out.append(label)
        else:
            out.append(key)
    return out


# ------------------------------------------------------------------------- text


def _wrap(text: str, indent: str, width: int = WIDTH) -> list[str]:
    out = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        out += textwrap.wrap(" ".join(paragraph.split()), width, initial_indent=indent, subsequent_indent=indent) or [indent]
        out.append("")
    return out[:-1]


def _list(items: Iterable[str], indent: str, width: int = WIDTH) -> list[str]:
    """``items`` comma-separated in lines of at most ``width`` (an item is never split)."""
    lines: list[str] = []
    line = ""
    for item in items:
        if line and len(indent) + len(line) + len(item) + 2 > width:
            lines.append(indent + line + ",")
            line = ""
        line = f"{line}, {item}" if line else item
    return [*lines, indent + line] if line else lines


def origin(name: str, method: Method) -> str:
    """Where method ``name`` comes from: built in, an installed entry point, an import path."""
    if name in MODULES:
        return f"built in ({MODULES[name]})"
    ep = None if ":" in name else entry_point(name)
    if ep is not None:
        dist = f" of {ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
        return f"entry point {ep.value}{dist}"
    return f"import path {name}"


def source(method: Method) -> str:
    """The seed paper (``seed NNN: citation``) or, for a method with none, its description."""
    if method.seed:
        number = method.seed.split("_", 1)[0]
        cite = method.paper.cite() if method.paper else "(no paper declared)"
        return f"seed {number}: {cite}"
    return method.description or "(no seed paper, no description)"


def data_formats(method: Method) -> str:
    if method.data_format == SOURCES:
        return f"several named datasets (data.sources), each of {', '.join(SOURCE_FORMATS)}"
    return method.data_format


def baseline(method: Method) -> str:
    if not method.baseline:
        return "none declared (name one with search.baseline)"
    return ", ".join(f"{key}={_value(value)}" for key, value in method.baseline.items())


def summary(name: str, method: Method) -> str:
    """The lines ``raysuite methods`` prints for one method: source, stages, data format,
    headline metric, metric keys (per-class families collapsed, the loop's own keys named
    once) and the number of declared departures."""
    stages = " -> ".join(s if d.recipe is not None else f"{s} (job)" for s, d in method.stages.items())
    loop = {f"{s}/{key}" for s in method.stages for key in LOOP_KEYS}
    own = [key for key in method.metric_keys() if key not in loop]
    lines = textwrap.wrap(f"{name}: {source(method)}", WIDTH, subsequent_indent="    ")
    if method.seed and method.description:
        lines.append(f"  {method.description}")
    lines += [
        f"  from: {origin(name, method)}",
        f"  stages: {stages}",
        f"  data format: {data_formats(method)}; headline metric: {method.monitor}",
        "  metric keys:",
        *_list(collapse(own), "    "),
        "    and each training stage's " + ", ".join(f"<stage>/{key}" for key in LOOP_KEYS[:3]) + ", ...",
        f"  {len(method.departures)} departures from the seed declared; its card: raysuite methods {name}",
    ]
    return "\n".join(lines)


def card(name: str, method: Method) -> str:
    """Everything a spec using ``name`` is written from (``raysuite methods NAME``)."""
    out = [
        *textwrap.wrap(f"{name}: {source(method)}", WIDTH, subsequent_indent="    "),
        *(_wrap(method.description, "  ") if method.seed and method.description else []),
        f"  from: {origin(name, method)}",
        f"  data format: {data_formats(method)}",
        f"  headline metric: {method.monitor} (objective.metric may name any metric key below)",
        f"  baseline arm: {baseline(method)}",
    ]
    if method.default_folds:
        out.append(f"  cross-validates: {method.default_folds} folds by default (search.repeats.fold)")
    for stage_name, stage in method.stages.items():
        out += ["", f"stage {stage_name}: {stage_kind(stage)}"]
        doc = inspect.cleandoc(stage.config.__dict__.get("__doc__") or "")
        if doc:
            out += _wrap(doc, "  ")
        out.append(f"  fields (stages.{stage_name}.<field> in a spec, or --set {stage_name}.<field>=VALUE):")
        for row in field_rows(stage.config):
            sep = " " if row.default.startswith("(") else " = "
            out.append(f"    {row.name}: {row.type}{sep}{row.default}")
            if row.meaning:
                out += _wrap(row.meaning, "        ")
        out.append("  metric keys:")
        out += _list(stage_metric_keys(method, stage_name), "    ")
    out += ["", "post-hoc knobs (searched on saved predictions, never by retraining):"]
    out += [f"  {knob}: {meaning}" for knob, meaning in method.posthoc_knobs.items()] or ["  none"]
    out += ["", f"departures from the seed: {len(method.departures)} declared"
            + (" (raysuite plan SPEC flags a sweep's values that differ from the seed's)" if method.departures else "")]  # fmt: skip
    for d in method.departures:
        out += textwrap.wrap(f"{d.item}: {d.ours}", WIDTH, initial_indent="  - ", subsequent_indent="    ")
    return "\n".join(out)
