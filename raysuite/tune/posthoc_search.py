"""Optuna variant of the ``one_case_cascade`` post-hoc search (seed 004, thesis §5.2).

Samples the pixel threshold, the classifier threshold, the minimum mask area and the TTA
mode with a seeded TPE sampler and scores each trial on saved predictions with
:func:`raysuite.methods.nn.posthoc.evaluate`. One :class:`StatsCache` serves every trial, so
a trial whose threshold falls on an already-seen quantisation level costs no pixel pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import optuna
import pandas as pd

from raysuite.methods.nn.posthoc import Predictions, StatsCache, evaluate, results_table


def optuna_search(
    pred: Predictions,
    space_bounds: Mapping[str, Sequence[float] | Sequence[int] | Sequence[str]],
    n_trials: int,
    seed: int = 0,
) -> pd.DataFrame:
    """Maximise ``dice_per_image`` on ``pred`` over ``n_trials`` TPE trials (seeded).

    ``space_bounds``: ``pixel_threshold: (lo, hi)`` and ``cls_threshold: (lo, hi)`` floats,
    ``min_area: (lo, hi)`` ints (inclusive), ``tta``: a tuple of TTA modes. Without a
    classifier ``cls_threshold`` is not sampled (and may be absent). Optuna's logging is set
    to WARNING during the search. Returns the table of
    :func:`raysuite.methods.nn.posthoc.grid_search`: one row per trial, best first.
    """
    cache = StatsCache(pred)
    rows = []

    def objective(trial: optuna.Trial) -> float:
        tta = trial.suggest_categorical("tta", list(space_bounds["tta"]))
        pixel = trial.suggest_float("pixel_threshold", *space_bounds["pixel_threshold"])
        cls = (
            trial.suggest_float("cls_threshold", *space_bounds["cls_threshold"])
            if pred.cls is not None
            else math.nan
        )
        min_area = trial.suggest_int("min_area", *space_bounds["min_area"])
        row = evaluate(pred, pixel, cls, min_area, tta, cache=cache)
        rows.append(row)
        return float(row["dice_per_image"])

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
        )
        study.optimize(objective, n_trials=n_trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return results_table(rows)
