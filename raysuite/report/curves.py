"""Sweep-level plots that a method asks for (``Method.report``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def label_fraction_curve(
    trials: pd.DataFrame, pool_param: str, metric: str, out: Path, value: str = "objective"
) -> Path | None:
    """Seed 000's figure: the metric (mean ± std over repeats, ddof = 0) against the fraction of the
    training set that stays labelled (1 - pool fraction); the pool-0 configuration (no
    pretraining, everything labelled) is drawn as the baseline line with its ± std band.

    ``trials``: one row per finished trial with ``value`` and the param column
    ``param.<pool_param>`` (JSON text, as MLflow stores it). Writes and returns
    ``<out>/label_fraction_curve.png`` (None when there is nothing to plot).
    """
    column = f"param.{pool_param}"
    if trials.empty or column not in trials or value not in trials:
        return None
    done = trials.dropna(subset=[value]).copy()
    done["labelled"] = 1.0 - done[column].map(
        lambda v: float(json.loads(v)) if isinstance(v, str) else float(v)
    )
    stats = done.groupby("labelled")[value].agg(
        mean="mean", std=lambda v: v.std(ddof=0), count="count"
    )
    stats = stats.reset_index().sort_values("labelled")
    stats["std"] = stats["std"].fillna(0.0)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pretrained = stats[stats.labelled < 1.0]
    ax.errorbar(pretrained.labelled, pretrained["mean"], yerr=pretrained["std"], marker="o", capsize=3,
                label="SimCLR-pretrained on the rest")  # fmt: skip
    base = stats[stats.labelled == 1.0]
    if len(base):
        m, s = float(base["mean"].iloc[0]), float(base["std"].iloc[0])
        ax.axhline(
            m, color="k", ls="--", label=f"baseline, all labelled (n={int(base['count'].iloc[0])})"
        )
        ax.axhspan(m - s, m + s, color="k", alpha=0.1)
    ax.set_xlabel("fraction of the training set labelled")
    ax.set_ylabel(f"{metric} (mean ± std over repeats, ddof = 0)")
    ax.set_xlim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) / "label_fraction_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    stats.to_csv(Path(out) / "label_fraction_curve.csv", index=False)
    return path
