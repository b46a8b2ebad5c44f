"""The sweep's post-hoc searcher: Optuna over any method's knobs (:mod:`raysuite.methods.knobs`).

A job stage that searches inference-time knobs on saved predictions receives :func:`search`
in ``StageInputs.posthoc_search`` (``tune/worker.py`` builds the inputs of worker and driver
jobs). ``n_trials=None`` is the grid (:func:`raysuite.methods.knobs.grid_search`); an int is
:func:`optuna_search`, a seeded TPE search. Nothing here knows a method: the knobs, their
meaning and the evaluation are the method's.
"""

from __future__ import annotations

from typing import Any

import optuna

from raysuite.methods.knobs import (
    Choice,
    Evaluate,
    FloatRange,
    IntRange,
    Mode,
    Space,
    best_first,
    check_request,
    check_space,
    grid_search,
    row,
    score,
)


def _suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """One combination: Choice -> categorical, FloatRange -> float (log), IntRange -> int,
    suggested in the space's knob order."""
    knobs: dict[str, Any] = {}
    for name, knob in space.items():
        if isinstance(knob, Choice):
            knobs[name] = trial.suggest_categorical(name, list(knob.values))
        elif isinstance(knob, FloatRange):
            knobs[name] = trial.suggest_float(name, knob.low, knob.high, log=knob.log)
        else:
            assert isinstance(knob, IntRange)
            knobs[name] = trial.suggest_int(name, knob.low, knob.high)
    return knobs


def optuna_search(
    evaluate: Evaluate,
    space: Space,
    objective: str,
    mode: Mode,
    n_trials: int | None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``n_trials`` trials of a TPE sampler seeded with ``seed`` (the same arguments give the
    same rows), each scoring ``evaluate(**knobs)[objective]``, maximised for ``mode="max"``
    and minimised for ``"min"``. Optuna's logging is held at WARNING during the search (and
    restored after); a NaN objective fails its trial in Optuna but keeps its row. Returns one
    row ``{**knobs, **metrics}`` per trial, best first (:func:`~raysuite.methods.knobs.best_first`:
    ties keep trial order)."""
    check_request(objective, mode, n_trials)
    check_space(space)
    if n_trials is None:
        raise ValueError("optuna_search needs n_trials (n_trials=None is the grid: grid_search)")
    rows: list[dict[str, Any]] = []

    def trial_objective(trial: optuna.Trial) -> float:
        knobs = _suggest(trial, space)
        metrics = evaluate(**knobs)
        value = score(metrics, objective)
        rows.append(row(knobs, metrics))
        return value

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            direction="maximize" if mode == "max" else "minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
        study.optimize(trial_objective, n_trials=n_trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return best_first(rows, objective, mode)


def search(
    evaluate: Evaluate,
    space: Space,
    objective: str,
    mode: Mode,
    n_trials: int | None,
    seed: int,
) -> list[dict[str, Any]]:
    """The :class:`~raysuite.methods.knobs.PosthocSearch` a sweep hands its jobs: the grid
    over Choice knobs when ``n_trials`` is None, else :func:`optuna_search`."""
    if n_trials is None:
        return grid_search(evaluate, space, objective, mode, None, seed)
    return optuna_search(evaluate, space, objective, mode, n_trials, seed)
