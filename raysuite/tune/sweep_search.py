"""The sweep's one searcher: its grid and its Optuna study side by side in one Tuner, and no
trial started before it can run.

A trial whose pretraining another live trial is computing would wait for it inside Tune,
holding a concurrency slot (and so, in effect, a device) while it waits: in seed 001's
design 10 of 24 fine-tunings wait on a pretraining, and only 3 of 8 GPUs pretrained. Here a
trial is started only when every shared stage it needs exists in the stage cache or nobody
alive is computing it, in which case it becomes that stage's producer. Waiting candidates
stay here, holding nothing; they start as soon as their producer's stage is stored (read
from the cache's markers) or their producer ends without it (one of them then produces it).

Among startable candidates those that produce a stage go first: they are the longer trials
(pretraining and fine-tuning), and starting them first is what lets their consumers start
while the cluster still has work (longest first, the list-scheduling rule). The two
studies take turns, so an Optuna study beside a grid starts at once and both share the
cluster's slots. A grid trial's config is ``{POINT: point, STUDY: "grid"}`` (its serialised point); an Optuna trial's
the suggestion with its repeat and ``STUDY: "optuna"``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from raysuite.plan import POINT

STUDY = "__study__"  # which study of the sweep a trial belongs to: "grid" or "optuna"
RECHECK_S = 5.0  # how often a waited-for stage's marker is looked up again


@dataclass
class _Candidate:
    study: str
    config: dict[str, Any]
    inner_id: str | None = None  # the Optuna side's id of this suggestion


@dataclass
class _Books:
    """What :class:`SharedStageSearcher` saves for ``--resume`` (its sources aside)."""

    grid: list[dict[str, Any]]  # grid trials' points (plan.grid_trials) not yet drawn
    pending: list[_Candidate] = field(default_factory=list)
    producer: dict[str, str] = field(default_factory=dict)  # stage key -> live trial computing it
    done: set[str] = field(default_factory=set)  # stage keys known stored
    started: dict[str, _Candidate] = field(default_factory=dict)  # Tune trial id -> candidate
    optuna_finished: bool = False
    turn: int = 0


class SharedStageSearcher(Searcher):
    """``grid``: the grid study's trials' serialised points (``plan.grid_trials``), in order; ``optuna``:
    the Optuna study (a :class:`~raysuite.tune.repeat_search.RepeatSearcher`) or None.
    ``shared_keys(config)``: the stage-cache keys of a trial's cacheable stages that run;
    ``stored(key)``: whether the cache holds the key (a marker exists). ``lookahead``: how many
    Optuna suggestions may wait here at once (a configuration's repeats)."""

    def __init__(self, grid: list[dict[str, Any]], optuna: Searcher | None, shared_keys: Callable[[dict[str, Any]], list[str]],
                 stored: Callable[[str], bool], metric: str, mode: str, lookahead: int = 1):  # fmt: skip
        super().__init__(metric=metric, mode=mode)
        self.optuna, self.shared_keys, self.stored, self.lookahead = optuna, shared_keys, stored, lookahead
        self.books = _Books(list(grid), optuna_finished=optuna is None)
        self._keys: dict[str, list[str]] = {}
        self._checked: dict[str, float] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if self.optuna is not None:
            self.optuna.set_search_properties(metric, mode, config, **spec)
        return True

    # -- choosing -------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        b = self.books
        self._draw(trial_id)
        chosen = self._pick()
        if chosen is None:
            if not b.pending and not b.grid and b.optuna_finished:
                return Searcher.FINISHED
            return None
        b.pending.remove(chosen)
        for key in self._keys_of(chosen):
            if key not in b.done:
                b.producer[key] = trial_id
        b.started[trial_id] = chosen
        b.turn += 1
        return {**chosen.config, STUDY: chosen.study}

    def _draw(self, trial_id: str) -> None:
        """Bring every grid trial into view (cheap: a small dict each) and, while fewer than
        ``lookahead`` Optuna suggestions wait here, ask the Optuna study for the next."""
        b = self.books
        b.pending.extend(_Candidate("grid", {POINT: point}) for point in b.grid)
        b.grid = []
        asked = 0
        while not b.optuna_finished and sum(c.study == "optuna" for c in b.pending) < self.lookahead:
            inner_id = f"{trial_id}-o{asked}"
            asked += 1
            assert self.optuna is not None  # optuna_finished starts True without a study
            config = self.optuna.suggest(inner_id)
            if config == Searcher.FINISHED:
                b.optuna_finished = True
            elif config is None:
                return
            else:
                b.pending.append(_Candidate("optuna", config, inner_id))

    def _pick(self) -> _Candidate | None:
        """The first startable candidate, producers first, the studies taking turns."""
        b = self.books
        first = ("grid", "optuna") if b.turn % 2 == 0 else ("optuna", "grid")
        startable = [c for c in b.pending if self._startable(c)]
        order = sorted(startable, key=lambda c: (not self._produces(c), first.index(c.study)))
        return order[0] if order else None

    def _startable(self, c: _Candidate) -> bool:
        return all(key in self.books.done or key not in self.books.producer or self._now_stored(key) for key in self._keys_of(c))

    def _produces(self, c: _Candidate) -> bool:
        return any(key not in self.books.done for key in self._keys_of(c))

    def _now_stored(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._checked.get(key, -RECHECK_S) < RECHECK_S:
            return False
        self._checked[key] = now
        if self.stored(key):
            self.books.done.add(key)
            self.books.producer.pop(key, None)
            return True
        return False

    def _keys_of(self, c: _Candidate) -> list[str]:
        name = repr(sorted(c.config.items()))
        if name not in self._keys:
            self._keys[name] = self.shared_keys(c.config)
        return self._keys[name]

    # -- hearing back ---------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate results are the scheduler's; stored stages are read from the cache."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        b = self.books
        chosen = b.started.get(trial_id)
        if chosen is None:
            return
        for key in self._keys_of(chosen):
            if b.producer.get(key) == trial_id:
                del b.producer[key]  # stored or not: a marker check decides, a waiter may produce it
                self._checked.pop(key, None)
        if chosen.study == "optuna" and self.optuna is not None:
            assert chosen.inner_id is not None  # an Optuna candidate carries its id
            self.optuna.on_trial_complete(chosen.inner_id, result=result, error=error)

    # -- resume ---------------------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        state: dict[str, Any] = {"books": self.books}
        if self.optuna is not None:
            with tempfile.TemporaryDirectory() as tmp:
                self.optuna.save(os.path.join(tmp, "optuna.pkl"))
                with open(os.path.join(tmp, "optuna.pkl"), "rb") as f:
                    state["optuna"] = f.read()
            state["repeats"] = self.optuna.get_state()
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.books = state["books"]
        if self.optuna is not None and "optuna" in state:
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "optuna.pkl"), "wb") as f:
                    f.write(state["optuna"])
                self.optuna.restore(os.path.join(tmp, "optuna.pkl"))
            self.optuna.set_state(state["repeats"])
