"""What a method is measured against: its paper, and every place it departs from it.

Each method declares its :class:`Paper` and a tuple of :class:`Departure` entries in code,
so ``raysuite plan``, ``raysuite methods``, the report and the parent run's
``departures.md`` all list the same facts. ``Method.seed_design`` gives the seed's own
value of config keys; :func:`design_flags` names every value of a configuration that
differs from it (a shipped default or a user's override alike).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Paper:
    """The seed as it names itself: title, authors and venue or identifier."""

    title: str
    authors: str
    venue: str

    def cite(self) -> str:
        return f"{self.authors}. {self.title}. {self.venue}."


@dataclass(frozen=True)
class Departure:
    """One place raysuite does something other than the seed: ``item`` (a config key such
    as ``train.batch_size`` when it is one), what the seed says (``seed``, with its
    section), what raysuite does (``ours``) and ``why``."""

    item: str
    seed: str
    ours: str
    why: str


def lookup(configs: Mapping[str, Mapping[str, Any]], key: str) -> Any:
    """``configs``' value of a dotted ``<stage>.<field>[.<subkey>...]`` key (KeyError if absent)."""
    stage, *path = key.split(".")
    value: Any = configs[stage]
    for part in path:
        value = value[part]
    return value


def _same(a: Any, b: Any) -> bool:
    if (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def design_flags(
    seed: str, design: Mapping[str, Any], configs: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """One line per key of the seed's ``design`` whose value in ``configs`` differs, e.g.
    ``not seed 003's design: `train.batch_size` 96 ≠ 48``."""
    flags = []
    for key, wanted in design.items():
        try:
            value = lookup(configs, key)
        except (KeyError, TypeError):
            continue
        if not _same(value, wanted):
            flags.append(f"not seed {seed}'s design: `{key}` {value!r} ≠ {wanted!r}")
    return flags


def departures_markdown(
    method: str,
    seed: str,
    paper: Paper | None,
    departures: Iterable[Departure],
    flags: Mapping[str, list[str]],
) -> str:
    """The ledger as Markdown (the parent run's ``departures.md``): the paper, a table of
    departures, then each configuration's values that differ from the seed's design."""
    cite = paper.cite() if paper else "(no paper declared)"
    lines = [f"# Departures from the seed: {method} (seed {seed})", "", cite, ""]
    rows = list(departures)
    if rows:
        lines += ["| item | the seed | raysuite | why |", "|---|---|---|---|"]
        lines += [
            f"| {_cell(d.item)} | {_cell(d.seed)} | {_cell(d.ours)} | {_cell(d.why)} |"
            for d in rows
        ]
    else:
        lines.append("The method declares no departures.")
    flagged = {label: items for label, items in flags.items() if items}
    lines += ["", "## Values of this sweep that differ from the seed's design", ""]
    if flagged:
        for label, items in flagged.items():
            lines.append(f"- {label}: " + "; ".join(items))
    else:
        lines.append("None: every configuration uses the seed's values where the seed gives one.")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
