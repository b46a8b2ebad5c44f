"""The sweep's searcher: no trial starts before the shared stage it needs is stored or it is
that stage's producer, producers go first, and the grid and Optuna studies take turns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray.tune.search import Searcher

from raysuite.plan import POINT
from raysuite.tune import sweep_search
from raysuite.tune.sweep_search import STUDY, SharedStageSearcher


@pytest.fixture(autouse=True)
def _no_recheck_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_search, "RECHECK_S", 0.0)


class Cache:
    """Stage keys per grid index, and which keys are stored."""

    def __init__(self, keys: dict[int, list[str]]):
        self.keys, self.stored = keys, set()

    def shared_keys(self, config: dict[str, Any]) -> list[str]:
        return self.keys.get(config.get(POINT, -1), [])


class FakeOptuna(Searcher):
    """Suggests ``{"x.y": n}`` for n = 0, 1, ... up to ``budget``; remembers what it was told."""

    def __init__(self, budget: int):
        super().__init__(metric="m", mode="max")
        self.budget, self.n, self.told = budget, 0, {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.n >= self.budget:
            return Searcher.FINISHED
        self.n += 1
        return {"x.y": self.n - 1}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.told[trial_id] = result

    def get_state(self) -> dict[str, Any]:
        return {"n": self.n}

    def set_state(self, state: dict[str, Any]) -> None:
        self.n = state["n"]

    def save(self, path: str) -> None:
        Path(path).write_text(str(self.n))

    def restore(self, path: str) -> None:
        self.n = int(Path(path).read_text())


def searcher(cache: Cache, grid: list[int], optuna: Searcher | None = None, lookahead: int = 1) -> SharedStageSearcher:
    return SharedStageSearcher(grid, optuna, cache.shared_keys, lambda k: k in cache.stored, "m", "max", lookahead)


def points(suggestions: list[Any]) -> list[Any]:
    return [s if not isinstance(s, dict) else s.get(POINT, s.get("x.y")) for s in suggestions]


def test_a_trial_waits_for_a_stage_another_live_trial_computes_holding_nothing() -> None:
    # seed 001's shape: two fine-tune seeds per pretraining (A, B); index 4 trains from scratch
    cache = Cache({0: ["A"], 1: ["A"], 2: ["B"], 3: ["B"]})
    s = searcher(cache, [0, 1, 2, 3, 4])
    first = [s.suggest(f"t{i}") for i in range(4)]
    # the two producers, then the scratch trial; the consumers of A and B are not started
    assert points(first) == [0, 2, 4, None]
    cache.stored.add("A")  # t0's pretraining is stored: its consumer may start, B's may not
    assert points([s.suggest("t5"), s.suggest("t6")]) == [1, None]
    s.on_trial_complete("t1")  # t2, B's producer, ends without storing B (killed, lost)...
    s.on_trial_complete("t2")
    nxt = s.suggest("t7")
    assert points([nxt]) == [3] and s.books.producer == {"B": "t7"}  # ...so the waiter produces it
    for t in ("t0", "t5", "t7", "t3"):
        s.on_trial_complete(t)
    assert s.suggest("t8") == Searcher.FINISHED


def test_two_live_trials_never_compute_one_stage() -> None:
    cache = Cache({i: ["A"] for i in range(6)})
    s = searcher(cache, list(range(6)))
    started = [x for x in (s.suggest(f"t{i}") for i in range(6)) if isinstance(x, dict)]
    assert points(started) == [0]
    assert s.books.producer == {"A": "t0"}


def test_producers_start_before_trials_that_share_nothing() -> None:
    cache = Cache({3: ["A"], 4: ["B"]})  # 0..2 train from scratch, listed first in the grid
    s = searcher(cache, [0, 1, 2, 3, 4])
    assert points([s.suggest(f"t{i}") for i in range(5)]) == [3, 4, 0, 1, 2]


def test_grid_and_optuna_take_turns_and_optuna_hears_its_own_trials() -> None:
    optuna = FakeOptuna(budget=2)
    s = searcher(Cache({}), [0, 1], optuna)
    got = [s.suggest(f"t{i}") for i in range(4)]
    assert [g[STUDY] for g in got] == ["grid", "optuna", "grid", "optuna"]
    assert s.suggest("t4") == Searcher.FINISHED  # nothing left to suggest (four still run)
    s.on_trial_complete("t1", {"m": 0.5})
    assert optuna.told == {"t0-o0": {"m": 0.5}}  # under Optuna's own id (drawn during t0's turn)


def test_resume_keeps_who_waits_for_whom(tmp_path: Any) -> None:
    cache = Cache({0: ["A"], 1: ["A"]})
    optuna = FakeOptuna(budget=3)
    s = searcher(cache, [0, 1], optuna)
    assert points([s.suggest("t0"), s.suggest("t1")]) == [0, 0]  # grid index 0, Optuna's x.y = 0
    s.save(str(tmp_path / "state.pkl"))
    again = searcher(cache, [0, 1], FakeOptuna(budget=3))
    again.restore(str(tmp_path / "state.pkl"))
    assert again.books.producer == {"A": "t0"}
    assert again.optuna.n == optuna.n
    # grid index 1 still waits for A: Optuna's next two go first, then nothing can start
    got = [again.suggest(f"t{i}") for i in (2, 3, 4)]
    assert [(g[STUDY], g["x.y"]) for g in got[:2]] == [("optuna", 1), ("optuna", 2)] and got[2] is None
    cache.stored.add("A")
    assert again.suggest("t5") == {POINT: 1, STUDY: "grid"}
