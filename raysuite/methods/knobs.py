"""Post-hoc knobs: inference-time settings a method searches on its saved predictions.

A method whose job saves predictions (seed 004's ``posthoc`` stage is the first) declares
what it can still change without retraining (a threshold, a minimum area, a test-time
augmentation) as a :data:`Space` of knobs, and supplies ``evaluate(**knobs) -> metrics``,
one call per combination, over its saved predictions. The search itself is a
:class:`PosthocSearch`, which the job receives in ``StageInputs.posthoc_search``:

- ``n_trials=None``: the grid, every combination of :class:`Choice` knobs
  (:func:`grid_search`, here, needing nothing from ``raysuite.tune``);
- ``n_trials=int``: a seeded Optuna TPE search of any knobs, ranges included; the sweep's
  trial (``raysuite.tune.posthoc_search``) hands it in, since only ``tune/`` imports Optuna.

Outside a sweep (tests, ``LocalRuntime``) ``posthoc_search`` is None and a job falls back to
:func:`search_posthoc`, the grid. A searcher returns one row per evaluated combination,
``{**knobs, **metrics}``, best first by ``objective`` (:func:`best_first`).

This module is floor 1 (``raysuite.methods``): it imports neither ``tune`` nor ``optuna``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

#: A :class:`Choice` value: what Optuna's categorical distribution accepts, and what a row holds.
ChoiceValue: TypeAlias = str | int | float | bool | None
Mode: TypeAlias = Literal["max", "min"]
MODES: tuple[Mode, ...] = ("max", "min")


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@dataclass(frozen=True)
class Choice:
    """A knob taking one of ``values`` (a non-empty sequence of str, int, float, bool or None;
    stored as a tuple). A grid tries them in the given order, and ties between rows keep
    that order (:func:`best_first`), so list the simplest value first."""

    values: Sequence[ChoiceValue]

    def __post_init__(self) -> None:
        if isinstance(self.values, str | bytes) or not isinstance(self.values, Iterable):
            raise ValueError(f"Choice needs a sequence of values, got {self.values!r}")
        values = tuple(self.values)
        if not values:
            raise ValueError("Choice needs at least one value")
        bad = [v for v in values if v is not None and not isinstance(v, str | int | float | bool)]
        if bad:
            raise ValueError(f"Choice values must be str, int, float, bool or None, got {bad[0]!r}")
        object.__setattr__(self, "values", values)


@dataclass(frozen=True)
class FloatRange:
    """A real knob in ``[low, high]`` (finite, ``low <= high``); ``log``: sampled uniformly in
    log space, which needs ``low > 0``. Only an Optuna search (``n_trials``) samples it."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (_is_number(self.low) and _is_number(self.high)):
            raise ValueError(
                f"FloatRange bounds must be numbers, got ({self.low!r}, {self.high!r})"
            )
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"FloatRange bounds must be finite, got ({self.low}, {self.high})")
        if self.low > self.high:
            raise ValueError(f"FloatRange low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"FloatRange(log=True) needs low > 0, got {self.low}")
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))


@dataclass(frozen=True)
class IntRange:
    """An integer knob in ``[low, high]``, both inclusive (``low <= high``). Only an Optuna
    search (``n_trials``) samples it."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for bound in (self.low, self.high):
            if not isinstance(bound, int) or isinstance(bound, bool):
                raise ValueError(f"IntRange bounds must be ints, got ({self.low!r}, {self.high!r})")
        if self.low > self.high:
            raise ValueError(f"IntRange low {self.low} is above high {self.high}")


Knob: TypeAlias = Choice | FloatRange | IntRange
#: Knob name -> knob. Names are the keyword arguments of ``evaluate`` and the first keys of
#: each row; their order is the grid's (the last name varies fastest) and Optuna's sampling order.
Space: TypeAlias = Mapping[str, Knob]
#: ``evaluate(**knobs) -> metrics``: one combination's scores (the objective among them).
Evaluate: TypeAlias = Callable[..., Mapping[str, float]]


class PosthocSearch(Protocol):
    """A search of ``space`` with ``evaluate``: one row per evaluated combination,
    ``{**knobs, **metrics}``, best first by ``metrics[objective]`` (``mode`` ``max`` or
    ``min``; ties keep evaluation order). ``n_trials=None`` is the grid over :class:`Choice`
    knobs; an int is that many trials of a TPE search seeded with ``seed``."""

    def __call__(
        self,
        evaluate: Evaluate,
        space: Space,
        objective: str,
        mode: Mode,
        n_trials: int | None,
        seed: int,
    ) -> list[dict[str, Any]]: ...


def check_space(space: Space) -> None:
    """Refuse a space that is empty, not a mapping, or has a name that cannot be a keyword
    argument or a value that is not a knob."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError(
            f"a post-hoc space must be a non-empty mapping of knob name -> knob, got {space!r}"
        )
    for name, knob in space.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"knob name {name!r} is not an identifier (it is a keyword of evaluate)"
            )
        if not isinstance(knob, Choice | FloatRange | IntRange):
            raise ValueError(
                f"knob {name!r} must be a Choice, FloatRange or IntRange, got {knob!r}"
            )


def check_request(objective: str, mode: str, n_trials: int | None) -> None:
    """Refuse an unknown ``mode``, an empty ``objective`` or a non-positive ``n_trials``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(objective, str) or not objective:
        raise ValueError(f"objective must be a metric name, got {objective!r}")
    if n_trials is not None and (
        not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1
    ):
        raise ValueError(f"n_trials must be a positive int or None (the grid), got {n_trials!r}")


def score(metrics: Mapping[str, Any], objective: str) -> float:
    """``metrics[objective]`` as a float; a missing objective is refused by name."""
    if objective not in metrics:
        raise ValueError(
            f"evaluate returned no objective {objective!r} (it returned {sorted(metrics)})"
        )
    return float(metrics[objective])


def row(knobs: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One result row: the knobs, then the metrics (a metric named like a knob replaces it in
    place)."""
    return {**knobs, **metrics}


def best_first(
    rows: Sequence[Mapping[str, Any]], objective: str, mode: Mode
) -> list[dict[str, Any]]:
    """``rows`` sorted best first by ``row[objective]`` (descending for ``max``, ascending for
    ``min``); NaN objectives go last; ties keep their input order (a stable sort), which is
    the grid's product order or Optuna's trial order, so the result is deterministic."""
    check_request(objective, mode, None)
    sign = -1.0 if mode == "max" else 1.0

    def key(r: Mapping[str, Any]) -> tuple[bool, float]:
        value = score(r, objective)
        return (math.isnan(value), 0.0 if math.isnan(value) else sign * value)

    return [dict(r) for r in sorted(rows, key=key)]


def grid(space: Space) -> list[dict[str, ChoiceValue]]:
    """Every combination of a space of :class:`Choice` knobs, as keyword dicts, in product
    order: the space's knob order, each knob's values in their order, the last knob varying
    fastest. A range knob is refused (a grid cannot enumerate it)."""
    check_space(space)
    ranges = [name for name, knob in space.items() if not isinstance(knob, Choice)]
    if ranges:
        raise ValueError(
            f"a grid search enumerates Choice knobs only; {ranges} are ranges "
            "(give them as Choice values, or search with n_trials for Optuna)"
        )
    names = list(space)
    values = [knob.values for knob in space.values() if isinstance(knob, Choice)]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def grid_search(
    evaluate: Evaluate,
    space: Space,
    objective: str,
    mode: Mode,
    n_trials: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Evaluate every combination of ``space`` (:class:`Choice` knobs only, :func:`grid`
    order); one row ``{**knobs, **metrics}`` each, best first (:func:`best_first`: ties keep
    the grid order). A :class:`PosthocSearch` for ``n_trials=None`` (an int is refused:
    sampling needs Optuna); ``seed`` is unused, a grid draws nothing."""
    check_request(objective, mode, n_trials)
    if n_trials is not None:
        raise ValueError(
            f"grid_search enumerates the grid; n_trials={n_trials} asks for an Optuna search"
        )
    rows = []
    for knobs in grid(space):
        metrics = evaluate(**knobs)
        score(metrics, objective)
        rows.append(row(knobs, metrics))
    return best_first(rows, objective, mode)


def search_posthoc(
    evaluate: Evaluate,
    space: Space,
    objective: str,
    mode: Mode,
    n_trials: int | None,
    seed: int,
) -> list[dict[str, Any]]:
    """The :class:`PosthocSearch` of a job run outside a sweep (``StageInputs.posthoc_search``
    is None): the grid (:func:`grid_search`). An Optuna request (``n_trials`` an int) is
    refused with what to do instead, since a method never imports ``raysuite.tune``."""
    check_request(objective, mode, n_trials)
    if n_trials is not None:
        raise ValueError(
            f"an Optuna post-hoc search (n_trials={n_trials}) runs only with the sweep's searcher: "
            "run the stage in a sweep (`raysuite sweep`), or pass "
            "StageInputs(posthoc_search=raysuite.tune.posthoc_search.search); or ask for the grid (n_trials=None)"
        )
    return grid_search(evaluate, space, objective, mode, None, seed)
