"""The report's figures (matplotlib, Agg, PNG). Each returns the file it wrote, or None when
the sweep has nothing of that kind to draw.

- :func:`config_bars`: objective mean and 95 % CI per configuration, each repeat a dot
  (seed 001's Table 4.2 as a figure: IoU intervals side by side).
- :func:`training_curves`: every trial's objective per epoch, the best trial drawn bold.
- :func:`collapse_curves`: ``pretrain/collapse`` per epoch, mean ± std per configuration
  (seed 001's Figure 4.3: the collapse coefficient per IoU interval).
- :func:`parallel_coordinates` / :func:`importance_bars`: an Optuna search's sampled
  settings coloured by the objective, and the parameter importances.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def config_bars(
    summary: pd.DataFrame, trials: pd.DataFrame, metric: str, baselines: Sequence[str], out: Path
) -> Path | None:
    """Horizontal bars, one per configuration in ``summary`` order: mean with its 95 % CI
    as ``summary`` holds it (a bounded metric's clipped to its range; no bar when n = 1),
    repeats as dots, baseline configurations in grey."""
    if summary.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(summary) + 1.4))
    y = np.arange(len(summary))[::-1]
    row: Any  # an itertuples() namedtuple with the summary's columns as fields
    for yi, row in zip(y, summary.itertuples(), strict=True):
        colour = "0.6" if row.config_id in baselines else "C0"
        err = (
            None
            if math.isnan(row.ci95_low)
            else [[row.mean - row.ci95_low], [row.ci95_high - row.mean]]
        )
        ax.barh(yi, row.mean, xerr=err, color=colour, alpha=0.75, capsize=3)
        values = trials.loc[trials.config_id == row.config_id, "objective"].dropna()
        ax.plot(values, np.full(len(values), yi), "k.", ms=4)
    ax.set_yticks(y, [_short(c) for c in summary.config], fontsize=7)
    ax.set_xlabel(f"{metric}: mean, 95 % CI, repeats (grey: baseline)")
    return _save(fig, out / "config_bars.png")


def _short(label: str, width: int = 60) -> str:
    """A configuration label without stage prefixes (``pretrain.init="x"`` -> ``init="x"``),
    cut to ``width`` characters."""
    label = re.sub(r"\b\w+\.(?=[\w.]+=)", "", label)
    return label if len(label) <= width else label[: width - 1] + "…"


def training_curves(trials: pd.DataFrame, histories: Mapping[str, Sequence[tuple[int, float]]], metric: str,
                    best_run: str | None, out: Path) -> Path | None:  # fmt: skip
    """``histories``: run_id -> [(epoch, value)] of ``metric``. Thin lines per trial, the
    best trial (``best_run``) bold and labelled."""
    if not any(histories.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    configs = list(dict.fromkeys(trials.config))
    row: Any  # an itertuples() namedtuple with the trials' columns as fields
    for row in trials.itertuples():
        points = sorted(histories.get(row.run_id, []))
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        best = row.run_id == best_run
        ax.plot(steps, values, color=f"C{configs.index(row.config) % 10}", lw=2.6 if best else 0.9,
                alpha=1.0 if best else 0.45, zorder=3 if best else 2,
                label=f"best: {_short(row.config, 50)} | {row.repeat}" if best else None)  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if best_run is not None:
        ax.legend(fontsize=7)
    return _save(fig, out / "training_curves.png")


def collapse_curves(
    trials: pd.DataFrame, histories: Mapping[str, Sequence[tuple[int, float]]], out: Path
) -> Path | None:
    """``histories``: run_id -> [(epoch, collapse coefficient)]. Mean ± std over the distinct
    pretrainings of each configuration (trials reusing one from the stage cache, same
    ``stage_key.pretrain`` tag, count once)."""
    per_config: dict[str, list[pd.Series]] = {}
    if "stage_key.pretrain" in trials:  # trials sharing a cached pretraining relay one history
        trials = trials.drop_duplicates(subset=["config", "stage_key.pretrain"])
    row: Any  # an itertuples() namedtuple with the trials' columns as fields
    for row in trials.itertuples():
        points = histories.get(row.run_id) or []
        if points:
            per_config.setdefault(row.config, []).append(pd.Series(dict(points)))
    if not per_config:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (config, series) in enumerate(per_config.items()):
        table = pd.concat(series, axis=1).sort_index()
        mean, std = table.mean(axis=1), table.std(axis=1).fillna(0.0)
        ax.plot(
            mean.index, mean, color=f"C{i % 10}", label=f"{_short(config, 50)} (n={len(series)})"
        )
        ax.fill_between(mean.index, mean - std, mean + std, color=f"C{i % 10}", alpha=0.15)
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("pretrain/collapse")
    ax.legend(fontsize=7)
    return _save(fig, out / "collapse_curves.png")


def parallel_coordinates(
    points: pd.DataFrame, log_axes: Sequence[str], metric: str, out: Path
) -> Path | None:
    """``points``: one row per Optuna trial, a column per searched parameter and
    ``objective``. Each axis spans its sampled range (log scale for ``log_axes``, categories
    at even steps); a trial is a line coloured by its objective."""
    params = [c for c in points if c != "objective"]
    points = points.dropna(subset=["objective"])
    if not params or len(points) < 2:
        return None
    scaled = pd.DataFrame(index=points.index)
    ticks: dict[str, tuple[list[float], list[str]]] = {}
    for p in params:
        column = points[p]
        if pd.api.types.is_numeric_dtype(column):
            v = np.log10(column.astype(float)) if p in log_axes else column.astype(float)
            lo, hi = float(v.min()), float(v.max())
            scaled[p] = (v - lo) / (hi - lo) if hi > lo else 0.5
            ends = [float(column.min()), float(column.max())]
            ticks[p] = ([0.0, 1.0], [f"{e:.3g}" for e in ends])
        else:
            cats = sorted(map(str, column.unique()))
            scaled[p] = column.map(lambda c, cats=cats: cats.index(str(c)) / max(1, len(cats) - 1))
            ticks[p] = ([i / max(1, len(cats) - 1) for i in range(len(cats))], cats)
    plt = _pyplot()
    from matplotlib.colors import Normalize

    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(params)), 4.5))
    norm = Normalize(points.objective.min(), points.objective.max())
    cmap = plt.get_cmap("viridis")
    x = np.arange(len(params))
    for i in points.sort_values("objective").index:
        ax.plot(
            x,
            scaled.loc[i, params].to_numpy(float),
            color=cmap(norm(points.at[i, "objective"])),
            alpha=0.8,
        )
    for xi, p in zip(x, params, strict=True):
        ax.axvline(float(xi), color="k", lw=0.6)
        for pos, text in zip(*ticks[p], strict=True):
            ax.text(xi + 0.03, pos, text, fontsize=7, va="center")
    ax.set_xlim(-0.3, len(params) - 0.3)  # room for the last axis' labels
    ax.set_xticks(x, params, fontsize=8)
    ax.set_yticks([])
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    return _save(fig, out / "optuna_parallel_coordinates.png")


def importance_bars(importances: Mapping[str, float], out: Path) -> Path | None:
    """Optuna's parameter importances (fANOVA, summing to 1) as horizontal bars."""
    if not importances:
        return None
    plt = _pyplot()
    names = sorted(importances, key=lambda n: importances[n])
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names], color="C2")
    ax.set_xlabel("importance for the objective (fANOVA)")
    return _save(fig, out / "optuna_importance.png")
