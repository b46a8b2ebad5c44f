"""ASHA over configurations, not trials: a configuration's repeats (seeds, folds) are
promoted or stopped together at each rung, on their mean.

Ray's ``ASHAScheduler`` decides per trial, so one fold of a configuration could be cut at
epoch 6 while its other fold ran to the end, and ``Repeater`` then averaged the two as if
both were complete. Here a rung's decision waits until every repeat of the configuration
has reached the rung (or ended: finished early, failed), then compares the configuration's
mean with the means other configurations had at that rung: it survives when it is in the
top ``1 / reduction_factor`` (ASHA's cut-off rule, Li et al. 2020). Repeats that reach the
rung first keep training meanwhile: pausing a function trainable would drop its Train
worker group, costing more than the epochs it saves. A pruned configuration's trials are
stopped at their next report and listed in :attr:`RepeatASHA.pruned` with the rung.

A trial the scheduler does not stop runs its whole pipeline: unlike Ray's ASHA with
``stop_last_trials=True``, reaching ``max_t`` on the progress stage is no reason to stop (the
stages after it, a prediction job or a post-hoc search, still have to run).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

Decision = str  # TrialScheduler.CONTINUE | TrialScheduler.STOP


def rungs(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """Milestones (progress-stage epochs) below ``max_t``: grace, grace*rf, grace*rf^2, ..."""
    out, t = [], float(grace_period)
    while t < max_t:
        out.append(int(round(t)))
        t *= reduction_factor
    return sorted(set(out))


class RungBook:
    """The pure bookkeeping behind :class:`RepeatASHA` (no Ray objects: testable on fake
    results). Values are signed so that larger is better."""

    def __init__(self, milestones: list[int], reduction_factor: float, repeats: int):
        self.milestones = milestones
        self.rf = reduction_factor
        self.repeats = repeats
        self.config_of: dict[str, str] = {}  # trial id -> configuration id
        self.members: dict[str, list[str]] = {}  # configuration -> its trials
        self.values: dict[str, dict[int, dict[str, float]]] = {}  # config -> rung -> trial -> value
        self.last: dict[str, float] = {}  # trial -> its latest value
        self.ended: set[str] = set()
        self.rung_means: dict[int, list[float]] = {m: [] for m in milestones}
        self.decided: dict[str, set[int]] = {}
        self.pruned_configs: dict[str, int] = {}  # config -> rung where it was cut
        self.pruned: dict[str, int] = {}  # trial -> rung

    def add(self, trial_id: str, config: str) -> None:
        self.config_of[trial_id] = config
        self.members.setdefault(config, []).append(trial_id)
        self.values.setdefault(config, {m: {} for m in self.milestones})
        self.decided.setdefault(config, set())
        if config in self.pruned_configs:  # a late repeat of an already pruned configuration
            self.pruned[trial_id] = self.pruned_configs[config]

    def result(self, trial_id: str, t: float | None, value: float | None) -> Decision:
        """A trial's report at progress ``t`` with its signed ``value`` (None: no objective
        in this report, e.g. a pretraining epoch or a stage after the progress stage)."""
        config = self.config_of[trial_id]
        if config in self.pruned_configs:
            self.pruned.setdefault(trial_id, self.pruned_configs[config])
            return TrialScheduler.STOP
        if t is None or value is None or math.isnan(value):
            return TrialScheduler.CONTINUE
        self.last[trial_id] = value
        for m in self.milestones:
            if t >= m:
                self.values[config][m].setdefault(trial_id, value)
        self._decide(config)
        return TrialScheduler.STOP if trial_id in self.pruned else TrialScheduler.CONTINUE

    def end(self, trial_id: str) -> None:
        """The trial finished, failed or was removed: it counts at every rung it did not
        reach with its last value (or not at all, if it never reported one)."""
        config = self.config_of.get(trial_id)
        if config is None or trial_id in self.ended:
            return
        self.ended.add(trial_id)
        if trial_id in self.last:
            for m in self.milestones:
                self.values[config][m].setdefault(trial_id, self.last[trial_id])
        self._decide(config)

    def _complete(self, config: str, m: int) -> bool:
        at = self.values[config][m]
        members = self.members[config]
        if len(members) < self.repeats:  # repeats not yet created wait to be counted
            return False
        return all(t in at or t in self.ended for t in members)

    def _decide(self, config: str) -> None:
        if config in self.pruned_configs:  # decided for good: no later rung, no say in others' cut-offs
            return
        for m in self.milestones:
            if m in self.decided[config] or not self._complete(config, m):
                continue
            self.decided[config].add(m)
            at = list(self.values[config][m].values())
            if not at:  # every repeat ended without a value: nothing to rank
                continue
            mean = float(np.mean(at))
            others = self.rung_means[m]
            others.append(mean)
            cutoff = float(np.nanpercentile(others, (1 - 1 / self.rf) * 100)) if len(others) > 1 else -math.inf
            if mean < cutoff:
                self.pruned_configs[config] = m
                for t in self.members[config]:
                    self.pruned[t] = m
                return


class RepeatASHA(FIFOScheduler):
    """:class:`RungBook` as a Tune scheduler. ``config_of`` maps a trial's Tune config to its
    configuration id (repeats share it), or None for a trial it leaves alone; ``time_attr`` is
    the progress stage's epoch."""

    def __init__(
        self,
        config_of: Callable[[dict[str, Any]], str | None],
        repeats: int,
        time_attr: str,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 3.0,
    ):
        super().__init__()
        self._config_of = config_of
        self._time_attr, self._metric = time_attr, metric
        self._sign = 1.0 if mode == "max" else -1.0
        self.book = RungBook(rungs(grace_period, max_t, reduction_factor), reduction_factor, repeats)

    @property
    def pruned(self) -> dict[str, int]:
        """Tune trial id -> the rung (progress-stage epoch) at which its configuration was cut."""
        return self.book.pruned

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode are the spec's objective, given at construction

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        config = self._config_of(trial.config)
        if config is not None:  # None: a trial this scheduler does not prune (a grid beside Optuna)
            self.book.add(trial.trial_id, config)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> Decision:
        if trial.trial_id not in self.book.config_of:
            return TrialScheduler.CONTINUE
        value = result.get(self._metric)
        signed = self._sign * float(value) if isinstance(value, int | float) else None
        return self.book.result(trial.trial_id, result.get(self._time_attr), signed)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.book.end(trial.trial_id)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.book.end(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.book.end(trial.trial_id)

    def debug_string(self) -> str:
        return f"RepeatASHA: rungs {self.book.milestones}, {len(self.book.pruned_configs)} configurations pruned"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.book, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.book = pickle.load(f)
