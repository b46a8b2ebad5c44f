"""The report's tables, from the sweep's child runs as :func:`raysuite.track.mlflow_runs.child_table`
gives them (one row per trial: ``config_id``, ``config``, ``repeat``, ``status``,
``start_time``/``end_time`` in ms, ``param.*`` as JSON text, the objective renamed
``objective`` and every other final metric under its own name).

- :func:`summary_table`: one row per configuration, n, mean, std (ddof = 0) and 95 % CI of
  the objective and of every other final metric (a bounded metric's CI clipped to its
  range, flagged), and its GPU/CPU-hours and cost.
- :func:`baseline_comparison`: each configuration against its baseline, paired over the
  repeats (seeds / folds) both ran, with Holm-adjusted p-values across the configurations
  compared.
- :func:`trial_cost` / :func:`sweep_cost`: device-hours from wall time and reservations.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from typing import Any, cast

import pandas as pd

from raysuite.report.stats import bounds_of, clip_interval, describe, holm, paired
from raysuite.report.summary import mean_std_text

# Bookkeeping a trial reports every epoch: summarising it over repeats says nothing.
_NOT_SUMMARISED = ("/epoch", "/lr", "_best")
STATS = ("n", "mean", "std", "ci95_low", "ci95_high")


def decode(value: Any) -> Any:
    """A param as MLflow stores it (strings raw, anything else JSON) back to a value."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def encoded(value: Any) -> Any:
    """``value`` as it reads back from MLflow, so a spec's ``0`` equals a logged ``0.0``."""
    return decode(value if isinstance(value, str) else json.dumps(value))


def summarised_metrics(trials: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The final metrics worth a mean over repeats: raysuite's own (``<stage>/<name>``,
    ``val/<name>``; Tune's ``pid``, ``timestamp``, ``iterations_since_restore``... have no
    ``/``), numeric, not bookkeeping (epochs, lr, stage-cache hits, outcome flags ``raysuite/*``)."""
    return [m for m in metrics if m in trials and "/" in m and not m.endswith(_NOT_SUMMARISED)
            and not m.startswith(("stage_cache/", "raysuite/"))
            and pd.api.types.is_numeric_dtype(trials[m])]  # fmt: skip


def trial_cost(trials: pd.DataFrame, resources: Mapping[str, Any]) -> pd.DataFrame:
    """Per trial: ``wall_h`` (run start to end; unfinished runs count nothing), and
    ``gpu_hours`` / ``cpu_hours`` = wall × workers × devices per worker, i.e. what the
    trial held while it ran (an upper bound of what it used: a trial waiting on another's
    pretraining still holds its reservation). ``cost`` adds the spec's prices when set."""
    wall = (trials["end_time"] - trials["start_time"]).clip(lower=0) / 3.6e6
    workers = resources.get("workers_per_trial", 1)
    out = pd.DataFrame({"wall_h": wall.fillna(0.0)}, index=trials.index)
    out["gpu_hours"] = out.wall_h * workers * resources.get("gpus_per_worker", 0)
    out["cpu_hours"] = out.wall_h * workers * resources.get("cpus_per_worker", 1)
    gpu_price, cpu_price = resources.get("price_per_gpu_hour"), resources.get("price_per_cpu_hour")
    if gpu_price is not None or cpu_price is not None:
        out["cost"] = out.gpu_hours * (gpu_price or 0.0) + out.cpu_hours * (cpu_price or 0.0)
    return out


def sweep_cost(trials: pd.DataFrame, resources: Mapping[str, Any]) -> dict[str, float]:
    """Totals over every trial that ran, failed ones included (they were paid for)."""
    cost = trial_cost(trials, resources)
    return {k: float(cost[k].sum()) for k in cost}


def bounded_describe(values: list[float], metric: str | None) -> dict[str, Any]:
    """:func:`~raysuite.report.stats.describe` of ``values`` with the CI clipped to the
    range of ``metric`` when it is bounded (:func:`~raysuite.report.stats.bounds_of`);
    ``ci95_clipped`` says whether the clip moved an end."""
    d: dict[str, Any] = describe(values)
    low, high, clipped = clip_interval(
        d["ci95_low"], d["ci95_high"], bounds_of(metric) if metric else None
    )
    return {**d, "ci95_low": low, "ci95_high": high, "ci95_clipped": clipped}


def summary_table(
    trials: pd.DataFrame,
    metrics: list[str],
    resources: Mapping[str, Any],
    objective: str | None = None,
) -> pd.DataFrame:
    """One row per configuration of the finished ``trials``: ``config_id``, ``config``,
    the objective's n, mean, std (ddof = 0), sample_std (ddof = 1), min, max, ci95_low,
    ci95_high (the t-interval of the mean, clipped to [0, 1] when ``objective``, the
    objective's metric name, is bounded), ``ci95_clipped`` and ``mean ± std`` text,
    ``<metric> mean|std|ci95_low|ci95_high|ci95_clipped`` for every metric of
    :func:`summarised_metrics` (clipped likewise by its own name), and the configuration's
    ``gpu_hours``, ``cpu_hours`` (and ``cost``)."""
    cost = trial_cost(trials, resources)
    rows = []
    for key, group in trials.groupby(["config_id", "config"], sort=False):
        cid, label = cast("tuple[Any, Any]", key)  # grouped by two columns: a pair
        row: dict[str, Any] = {
            "config_id": cid,
            "config": label,
            **bounded_describe(group["objective"].tolist(), objective),
        }
        row["mean ± std"] = mean_std_text(row["mean"], row["std"], row["n"])
        for metric in summarised_metrics(trials, metrics):
            d = bounded_describe(group[metric].tolist(), metric)
            row.update({f"{metric} {k}": d[k] for k in (*STATS[1:], "ci95_clipped")})
        row.update(cost.loc[group.index].sum().drop("wall_h").to_dict())
        rows.append(row)
    return pd.DataFrame(rows)


def with_pruned(summary: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (of finished trials) plus ``pruned``: how many of each configuration's
    trials the scheduler stopped (runs KILLED, tag ``raysuite.pruned``), and ``pruned_at``,
    the rungs it stopped them at. A configuration pruned whole gets a row with n = 0: it is
    listed, and its trials are never averaged with complete ones."""
    killed = trials.loc[trials.status == "KILLED"] if "status" in trials else trials.iloc[:0]
    out = (
        summary.copy() if not summary.empty else pd.DataFrame(columns=["config_id", "config", "n"])
    )
    out["pruned"] = 0
    out["pruned_at"] = ""
    for key, group in killed.groupby(["config_id", "config"], sort=False):
        cid, label = cast("tuple[Any, Any]", key)  # grouped by two columns: a pair
        pruned = group["pruned"] if "pruned" in group else pd.Series(dtype=str)
        rungs = ",".join(sorted({str(r) for r in pruned.dropna()}))
        if cid not in set(out.config_id):
            out.loc[len(out), ["config_id", "config", "n"]] = [cid, label, 0]
        where = out.config_id == cid
        out.loc[where, "pruned"] = len(group)
        out.loc[where, "pruned_at"] = rungs
    out["n"] = out["n"].astype(int)
    out["pruned"] = out["pruned"].astype(int)
    return out


def _config_params(trials: pd.DataFrame) -> pd.DataFrame:
    """config_id -> its decoded ``param.stages.*`` and ``param.search.arm`` (seeds dropped)."""
    columns = [
        c
        for c in trials
        if (c.startswith("param.stages.") and not c.endswith(".seed")) or c == "param.search.arm"
    ]
    first = cast(pd.DataFrame, trials.groupby("config_id", sort=False)[columns].first())
    return first.map(decode)


def baseline_configs(trials: pd.DataFrame, baseline: str | Mapping[str, Any]) -> list[str]:
    """config_ids that are the baseline: the arm named ``baseline``, or every configuration
    whose ``<stage>.<field>`` values equal ``baseline``'s (nested values compared leaf by leaf)."""
    params = _config_params(trials)
    if isinstance(baseline, str):
        column = params.get("param.search.arm")
        return [] if column is None else column.index[(column == baseline).to_numpy()].tolist()
    wanted = {f"param.stages.{k}": encoded(v) for k, v in _leaves(baseline).items()}
    if any(c not in params for c in wanted):
        return []
    match = pd.Series(True, index=params.index)
    for column, value in wanted.items():
        match &= params[column].map(lambda v, value=value: v == value)
    return match.index[match.to_numpy()].tolist()


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(
            _leaves(value, f"{name}.") if isinstance(value, Mapping) and value else {name: value}
        )
    return out


def _key(value: Any) -> str:
    """A hashable, comparable text of a decoded param (numpy scalars as Python ones)."""
    return json.dumps(
        value, sort_keys=True, default=lambda o: o.item() if hasattr(o, "item") else str(o)
    )


def _likeness(
    params: pd.DataFrame, varied: list[str], cid: Hashable, base: Hashable
) -> tuple[int, ...]:
    """How like configuration ``base`` is ``cid``: the settings both share, counted first
    among the settings the sweep varies least (task, encoder), then among the rest (an arm's
    own epochs or batch), so a tie on the count alone never pairs genesis VGG-16 on MURA
    with scratch ResNet-50 on MURA because their schedules happen to agree."""
    by_values: dict[int, int] = {}
    for c in varied:
        n = params[c].map(_key).nunique()
        by_values[n] = by_values.get(n, 0) + (_key(params.at[cid, c]) == _key(params.at[base, c]))
    return tuple(by_values[n] for n in sorted(by_values))


def baseline_comparison(trials: pd.DataFrame, baseline: str | Mapping[str, Any]) -> pd.DataFrame:
    """Every non-baseline configuration against the baseline configuration most like it
    (equal on the most other settings: genesis VGG-16 on LUNA16 meets scratch VGG-16 on
    LUNA16), paired over the repeats (``repeat``: seeds and fold) both finished.

    Columns: config, baseline, n_pairs, mean, baseline_mean (over the pairs), mean_diff,
    t, p_t, w, p_wilcoxon (:func:`raysuite.report.stats.paired`), and ``p_t_holm``,
    ``p_wilcoxon_holm``: each test's p-value Holm-adjusted across the configurations
    compared (:func:`raysuite.report.stats.holm`; one family per test). Empty when no
    configuration is the baseline."""
    bases = baseline_configs(trials, baseline)
    if not bases:
        return pd.DataFrame()
    params = _config_params(trials)
    varied = [c for c in params if params[c].map(_key).nunique() > 1]
    labels = trials.groupby("config_id", sort=False)["config"].first()
    rows = []
    for cid in labels.index:
        if cid in bases:
            continue
        base = max(bases, key=lambda b: _likeness(params, varied, cid, b))
        mine = trials[trials.config_id == cid].groupby("repeat")["objective"].mean()
        theirs = trials[trials.config_id == base].groupby("repeat")["objective"].mean()
        shared = mine.index.intersection(theirs.index)
        test = paired(mine[shared].tolist(), theirs[shared].tolist())
        rows.append({"config": labels[cid], "baseline": labels[base], "n_pairs": test["n_pairs"],
                     "mean": float(mine[shared].mean()), "baseline_mean": float(theirs[shared].mean()),
                     **{k: test[k] for k in ("mean_diff", "t", "p_t", "w", "p_wilcoxon")}})  # fmt: skip
    out = pd.DataFrame(rows)
    if not out.empty:
        out.insert(out.columns.to_list().index("w"), "p_t_holm", holm(out["p_t"].tolist()))
        out["p_wilcoxon_holm"] = holm(out["p_wilcoxon"].tolist())
    return out
