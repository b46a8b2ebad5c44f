"""Per-configuration summary over repeats: n, mean, std of the objective. The std is the
population std (ddof = 0), as the seeds' tables print it (seed 001's Table 4.2: see
:mod:`raysuite.report.stats`)."""

from __future__ import annotations

import pandas as pd


def summarise(trials: pd.DataFrame, value: str = "objective") -> pd.DataFrame:
    """``trials``: one row per finished trial with ``config_id``, ``config`` (label) and
    ``value``. Returns one row per configuration: n, mean, std (ddof = 0), min, max and
    ``mean ± std`` as text, ordered by mean (best first is left to the caller). A single
    repeat has no spread: its std is 0 and its text says ``(n=1)`` instead of ``± 0``."""
    done = trials.dropna(subset=[value])
    grouped = done.groupby(["config_id", "config"], sort=False)[value]
    out = grouped.agg(
        n="count", mean="mean", std=lambda v: v.std(ddof=0), min="min", max="max"
    ).reset_index()
    out["std"] = out["std"].fillna(0.0)
    out["mean ± std"] = [
        mean_std_text(m, s, n) for m, s, n in zip(out["mean"], out["std"], out["n"], strict=True)
    ]
    return out


def mean_std_text(mean: float, std: float, n: int) -> str:
    """``0.8100 ± 0.0265``; one repeat has no spread: ``0.8100 (n=1)``."""
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f} (n={n})"
