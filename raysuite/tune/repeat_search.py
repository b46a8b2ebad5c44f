"""Repeats of one searched configuration as one unit for the searcher (Ray's ``Repeater``,
redone): Optuna hears one value per configuration, the mean objective over its repeats, and
only once every repeat has ended after its last stage. A configuration any of whose repeats
the scheduler stopped is told as pruned; one with a failed or diverged repeat as failed.

Duplicate suggestions (common with ``choice`` and ``randint``) are not trained again: the
repeat seeds are the same, so a second training would spend the GPU budget on the same
numbers. The duplicate is told the original's outcome (at once when the original has ended,
else when it ends) and counts towards ``n_trials``, as a trial Optuna asked for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from raysuite.plan import REPEAT
from raysuite.spec import config_id
from raysuite.tune.outcome import Outcome, classify


@dataclass
class _Group:
    inner_id: str  # the id the wrapped searcher knows this configuration by
    config: dict[str, Any]
    trials: list[str] = field(default_factory=list)
    outcomes: dict[str, tuple[Outcome, float]] = field(default_factory=dict)
    followers: list[str] = field(default_factory=list)  # inner ids of duplicate suggestions
    told: tuple[Outcome, float] | None = None  # what the searcher was told, once all ended


class RepeatSearcher(Searcher):
    """Wraps ``searcher`` (Optuna): ``repeats`` Tune trials per suggestion, at most ``budget``
    suggestions."""

    def __init__(self, searcher: Searcher, repeats: int, budget: int):
        self.searcher = searcher
        self.repeats, self.budget = repeats, budget
        self._groups: dict[str, _Group] = {}  # configuration id -> group
        self._trial_group: dict[str, str] = {}  # Tune trial id -> configuration id
        self._current: str | None = None
        self._asked = 0
        self.duplicates = 0
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        group = self._groups.get(self._current) if self._current else None
        while group is None or len(group.trials) >= self.repeats:
            if self._asked >= self.budget:
                return Searcher.FINISHED
            inner_id = f"{trial_id}-s{self._asked}"
            config = self.searcher.suggest(inner_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self._asked += 1
            key = config_id({k: v for k, v in config.items() if "." in k})  # as plan.decode reads it
            if key in self._groups:  # a duplicate: answered from the original, not trained
                self.duplicates += 1
                original = self._groups[key]
                original.followers.append(inner_id)
                if original.told is not None:
                    self._tell(inner_id, *original.told)
                continue
            group = _Group(inner_id, copy.deepcopy(config))
            self._groups[key] = group
            self._current = key
        group.trials.append(trial_id)
        assert self._current is not None  # set with the group
        self._trial_group[trial_id] = self._current
        return {**group.config, REPEAT: len(group.trials) - 1}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate results stay with the scheduler: Optuna sees whole configurations."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self._trial_group.get(trial_id)
        if key is None:
            return
        group = self._groups[key]
        value = (result or {}).get(self._metric)
        group.outcomes[trial_id] = (classify(result, error), float(value) if value is not None else float("nan"))
        if len(group.outcomes) < self.repeats or group.told is not None:
            return
        outcomes = [o for o, _ in group.outcomes.values()]
        if any(o in ("failed", "diverged") for o in outcomes):
            group.told = ("failed", float("nan"))
        elif "pruned" in outcomes:
            group.told = ("pruned", float("nan"))
        else:
            group.told = ("complete", float(np.mean([v for _, v in group.outcomes.values()])))
        for inner_id in [group.inner_id, *group.followers]:
            self._tell(inner_id, *group.told)

    def _tell(self, inner_id: str, outcome: Outcome, value: float) -> None:
        if outcome == "complete":
            self.searcher.on_trial_complete(inner_id, result={self._metric: value})
        else:  # OptunaSearch: no result and no error -> PRUNED; error -> FAIL
            self.searcher.on_trial_complete(inner_id, result=None, error=outcome == "failed")

    def get_state(self) -> dict[str, Any]:
        """This wrapper's groups (which repeats are still owed, what Optuna was told): Tune's
        SearchGenerator saves a wrapper's state beside the wrapped searcher's own file, so
        ``--resume`` carries both."""
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
