"""Parameter importances of an Optuna sweep, for the report (Optuna is imported in this
package only).

The sweep's Optuna study lives inside Ray Tune's searcher; the report rebuilds an
equivalent in-memory study from the finished trials' searched values (the child runs'
``search.*`` params) and the spec's space, then asks Optuna's default fANOVA evaluator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import pandas as pd

from raysuite.spec import Choice, Distribution, IntRange, LogUniform, Uniform


def _distribution(dist: Distribution) -> Any:
    import optuna.distributions as d

    if isinstance(dist, Uniform):
        return d.FloatDistribution(*dist.uniform)
    if isinstance(dist, LogUniform):
        return d.FloatDistribution(*dist.loguniform, log=True)
    if isinstance(dist, IntRange):
        return d.IntDistribution(*dist.randint)  # spec bounds are inclusive, as Optuna's
    assert isinstance(dist, Choice)
    return d.CategoricalDistribution([_hashable(c) for c in dist.choice])


def _hashable(value: Any) -> Any:
    return (
        value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)
    )


def param_importances(
    points: pd.DataFrame, space: Mapping[str, Distribution], direction: Literal["max", "min"]
) -> dict[str, float]:
    """``points``: one row per finished trial, a column per key of ``space`` (decoded
    values) and ``objective``. Returns {parameter: importance} (summing to 1), or {} when
    fewer than two trials or no spread in the objective leave nothing to attribute."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: _distribution(v) for k, v in space.items()}
    study = optuna.create_study(direction="maximize" if direction == "max" else "minimize")
    for row in points.to_dict("records"):
        value = row.get("objective")
        if value is None or math.isnan(value) or any(k not in row or row[k] is None for k in dists):
            continue
        params = {k: _hashable(row[k]) for k in dists}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(value))
        )
    values = [t.value for t in study.trials if t.value is not None]  # each added with its value
    if len(values) < 2 or max(values) == min(values):
        return {}
    return dict(optuna.importance.get_param_importances(study))
