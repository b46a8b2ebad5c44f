"""The post-hoc knob protocol (raysuite.methods.knobs) and the sweep's Optuna searcher."""

from __future__ import annotations

import math

import pytest

from raysuite.methods.knobs import (
    Choice,
    FloatRange,
    IntRange,
    best_first,
    grid,
    grid_search,
    search_posthoc,
)
from raysuite.tune.posthoc_search import optuna_search, search


class Toy:
    """``score = a + (b == "y")`` on a ``Choice`` grid, recording each call's knobs."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def __call__(self, a: int, b: str) -> dict[str, float]:
        self.calls.append((a, b))
        return {"score": float(a + (b == "y")), "a_twice": float(2 * a)}


TOY = {"a": Choice((1, 2, 3)), "b": Choice(["x", "y"])}
PRODUCT = [(1, "x"), (1, "y"), (2, "x"), (2, "y"), (3, "x"), (3, "y")]


def _knobs(rows):
    return [(r["a"], r["b"]) for r in rows]


def test_grid_is_the_product_in_space_order_last_knob_fastest():
    assert [(c["a"], c["b"]) for c in grid(TOY)] == PRODUCT
    swapped = {"b": TOY["b"], "a": TOY["a"]}
    assert [(c["b"], c["a"]) for c in grid(swapped)] == [(b, a) for b in "xy" for a in (1, 2, 3)]


def test_grid_search_max_best_first_ties_keep_grid_order():
    toy = Toy()
    rows = grid_search(toy, TOY, "score", "max")
    assert toy.calls == PRODUCT
    # scores in product order: 1 2 2 3 3 4; ties (2,y)/(3,x) and (1,y)/(2,x) keep product order
    assert _knobs(rows) == [(3, "y"), (2, "y"), (3, "x"), (1, "y"), (2, "x"), (1, "x")]
    assert [r["score"] for r in rows] == [4.0, 3.0, 3.0, 2.0, 2.0, 1.0]
    assert list(rows[0]) == ["a", "b", "score", "a_twice"]  # knobs first, then the metrics
    assert rows[0]["a_twice"] == 6.0


def test_grid_search_min_mode():
    rows = grid_search(Toy(), TOY, "score", "min")
    assert _knobs(rows) == [(1, "x"), (1, "y"), (2, "x"), (2, "y"), (3, "x"), (3, "y")]
    assert [r["score"] for r in rows] == [1.0, 2.0, 2.0, 3.0, 3.0, 4.0]


def test_search_posthoc_is_the_grid_outside_a_sweep():
    assert search_posthoc(Toy(), TOY, "score", "max", None, 0) == grid_search(Toy(), TOY, "score", "max")
    with pytest.raises(ValueError, match=r"Optuna post-hoc search \(n_trials=5\) runs only with the sweep"):
        search_posthoc(Toy(), TOY, "score", "max", 5, 0)


def test_best_first_puts_nan_last_and_is_stable():
    rows = [{"k": 0, "m": math.nan}, {"k": 1, "m": 1.0}, {"k": 2, "m": 3.0}, {"k": 3, "m": 1.0}]
    assert [r["k"] for r in best_first(rows, "m", "max")] == [2, 1, 3, 0]
    assert [r["k"] for r in best_first(rows, "m", "min")] == [1, 3, 2, 0]


def test_knob_a_metric_overrides_keeps_its_place():
    rows = grid_search(lambda a: {"a": 10.0 * a, "m": float(a)}, {"a": Choice((1, 2))}, "m", "max")
    assert rows == [{"a": 20.0, "m": 2.0}, {"a": 10.0, "m": 1.0}]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Choice(()), "at least one value"),
        (lambda: Choice("ab"), "sequence of values"),
        (lambda: Choice((1, object())), "must be str, int, float, bool or None"),
        (lambda: FloatRange(1.0, 0.5), "low 1.0 is above high 0.5"),
        (lambda: FloatRange(0.0, 1.0, log=True), "log=True.*low > 0"),
        (lambda: FloatRange(0.0, math.inf), "finite"),
        (lambda: FloatRange("0", 1.0), "must be numbers"),
        (lambda: IntRange(0.5, 2), "must be ints"),
        (lambda: IntRange(True, 2), "must be ints"),
        (lambda: IntRange(3, 1), "low 3 is above high 1"),
    ],
)
def test_bad_knobs_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("space", "match"),
    [
        ({}, "non-empty mapping"),
        ([Choice((1,))], "non-empty mapping"),
        ({"not-a-name": Choice((1,))}, "not an identifier"),
        ({"a": (1, 2)}, "must be a Choice, FloatRange or IntRange"),
        ({"a": Choice((1,)), "x": FloatRange(0.0, 1.0)}, r"Choice knobs only; \['x'\] are ranges"),
    ],
)
def test_bad_spaces_are_refused_by_the_grid(space, match):
    with pytest.raises(ValueError, match=match):
        grid_search(lambda **k: {"m": 0.0}, space, "m", "max")


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        grid_search(Toy(), TOY, "score", "best")
    with pytest.raises(ValueError, match="n_trials=3 asks for an Optuna search"):
        grid_search(Toy(), TOY, "score", "max", n_trials=3)
    with pytest.raises(ValueError, match="no objective 'dice'"):
        grid_search(Toy(), TOY, "dice", "max")
    with pytest.raises(ValueError, match="n_trials must be a positive int"):
        optuna_search(Toy(), TOY, "score", "max", n_trials=0)
    with pytest.raises(ValueError, match="needs n_trials"):
        optuna_search(Toy(), TOY, "score", "max", n_trials=None)


def quadratic(x: float, n: int, c: str) -> dict[str, float]:
    """Maximum 0.5 at x = 0.7, n = 6, c = "b"."""
    return {"q": -((x - 0.7) ** 2) - (n - 6) ** 2 / 10 + 0.5 * (c == "b")}


QUAD = {"x": FloatRange(-2.0, 2.0), "n": IntRange(0, 10), "c": Choice(("a", "b"))}


def test_optuna_finds_the_optimum_of_a_quadratic_and_is_seeded():
    rows = optuna_search(quadratic, QUAD, "q", "max", n_trials=60, seed=0)
    assert len(rows) == 60
    best = rows[0]
    assert best["q"] > 0.5 - 0.05
    assert abs(best["x"] - 0.7) < 0.25 and best["n"] == 6 and best["c"] == "b"
    assert [r["q"] for r in rows] == sorted((r["q"] for r in rows), reverse=True)
    assert all(-2 <= r["x"] <= 2 and isinstance(r["n"], int) and 0 <= r["n"] <= 10 for r in rows)
    assert rows == optuna_search(quadratic, QUAD, "q", "max", n_trials=60, seed=0)
    assert rows != optuna_search(quadratic, QUAD, "q", "max", n_trials=60, seed=1)


def test_optuna_min_mode_and_log_ranges():
    def loss(lr: float) -> dict[str, float]:
        return {"loss": (math.log10(lr) + 2.5) ** 2}  # minimum at lr = 10**-2.5

    rows = optuna_search(loss, {"lr": FloatRange(1e-5, 1e-1, log=True)}, "loss", "min", n_trials=40, seed=0)
    assert [r["loss"] for r in rows] == sorted(r["loss"] for r in rows)
    assert rows[0]["loss"] < 0.05
    lrs = [r["lr"] for r in rows]
    assert all(1e-5 <= lr <= 1e-1 for lr in lrs) and min(lrs) < 1e-4  # log space reaches the decades


def test_dispatcher_is_the_grid_without_trials_and_optuna_with():
    assert search(Toy(), TOY, "score", "max", None, 0) == grid_search(Toy(), TOY, "score", "max")
    assert search(quadratic, QUAD, "q", "max", 12, 3) == optuna_search(quadratic, QUAD, "q", "max", 12, 3)
    with pytest.raises(ValueError, match=r"Choice knobs only; \['x', 'n'\] are ranges"):
        search(quadratic, QUAD, "q", "max", None, 0)
