"""Statistics over repeats: mean, std, a 95 % confidence interval of the mean, paired tests
of a configuration against its baseline over the seeds / folds they share, Holm's
adjustment of those tests across the configurations compared, and the range of a bounded
metric that its interval is clipped to.

The seeds report mean ± std over a handful of repeats (seed 001's Table 4.2: four runs;
seed 004's Table 5.1: five folds). The std the report prints is the population std
(ddof = 0), as seed 001's Table 4.2 prints it: its rows' stds are those of their four
listed runs with ddof = 0 (row "-": 0.842, 0.848, 0.846, 0.836 -> 0.0046 with ddof = 0,
0.0053 with ddof = 1; printed 0.004). With so few repeats the interval uses Student's t on
the sample std (ddof = 1, as the t-interval is defined):
``mean ± t_{0.975, n-1} · s / √n``; one repeat has no interval (NaN). Two configurations
run on the same seeds or folds are compared pairwise, which removes the between-fold
spread both share: the paired t-test on the differences and the Wilcoxon signed-rank test
(no normality assumed; with n ≤ 5 pairs its smallest two-sided p-value is 0.0625, so it
cannot reach 0.05 — the report says how many pairs each test had).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as st

NAN = float("nan")
UNIT = (0.0, 1.0)
# A metric is bounded to [0, 1] when a word of its name (the part after the last "/", split
# at "_", "-", "." and "@"; trailing digits dropped, so map40 -> map) is one of these and no
# word names a loss or an error: Dice, AUC, accuracy, mAP, IoU/IoR localisation accuracy,
# F1, precision, recall, ... Values that happen to lie within [0, 1] are not enough (a loss
# or an MSE can, too).
BOUNDED_WORDS = frozenset({
    "dice", "dsc", "auc", "auroc", "acc", "accuracy", "map", "ap", "iou", "ior", "jaccard",
    "f", "f1", "precision", "recall", "sensitivity", "specificity", "top", "rate",
})  # fmt: skip
UNBOUNDED_WORDS = frozenset({"loss", "bce", "ce", "mse", "mae", "rmse", "error", "seconds", "s"})


def describe(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """n, mean, ``std`` (population, ddof = 0: what the tables print; 0 for one value),
    ``sample_std`` (ddof = 1; NaN for one value), min, max and the ``level`` t-interval of
    the mean from the sample std (``ci95_low``/``ci95_high``; NaN for fewer than two values).
    NaNs are dropped."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": NAN, "std": NAN, "sample_std": NAN, "min": NAN, "max": NAN,
                "ci95_low": NAN, "ci95_high": NAN}  # fmt: skip
    mean = float(x.mean())
    std = float(x.std(ddof=0))
    sample_std = float(x.std(ddof=1)) if n > 1 else NAN
    half = float(st.t.ppf(0.5 + level / 2, n - 1)) * sample_std / math.sqrt(n) if n > 1 else NAN
    return {"n": n, "mean": mean, "std": std, "sample_std": sample_std, "min": float(x.min()),
            "max": float(x.max()), "ci95_low": mean - half, "ci95_high": mean + half}  # fmt: skip


def paired(candidate: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Paired comparison of equal-length sequences (pair i: the same seed / fold).

    Returns ``n_pairs``, ``mean_diff`` (candidate - baseline), the paired t statistic and
    two-sided p-value (``t``, ``p_t``; NaN under 2 pairs or when every difference is equal),
    and the Wilcoxon signed-rank statistic and two-sided p-value (``w``, ``p_wilcoxon``;
    exact for small n, zero differences dropped as Wilcoxon did; NaN when no non-zero
    difference is left).
    """
    a, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    out = {"n_pairs": int(len(d)), "mean_diff": float(d.mean()) if len(d) else NAN,
           "t": NAN, "p_t": NAN, "w": NAN, "p_wilcoxon": NAN}  # fmt: skip
    # equal differences up to float rounding (0.6 - 0.5 vs 0.7 - 0.6) leave t undefined
    if len(d) >= 2 and float(d.std(ddof=1)) > 1e-9 * max(1.0, float(np.abs(d).max())):
        t = st.ttest_rel(a[keep], b[keep])
        out["t"], out["p_t"] = float(t.statistic), float(t.pvalue)
    d = np.where(np.abs(d) < 1e-12, 0.0, d)
    if np.count_nonzero(d) >= 1:
        # scipy types the result as a bare tuple; it is a WilcoxonResult(statistic, pvalue)
        w: Any = st.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out["w"], out["p_wilcoxon"] = float(w.statistic), float(w.pvalue)
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values, in their input order.

    With the m non-NaN p-values sorted ascending, p_(1) ≤ ... ≤ p_(m), the adjusted value
    of p_(i) is ``max_{j ≤ i} min(1, (m - j + 1) · p_(j))``: monotone in the order, never
    above 1, and controlling the family-wise error rate. NaN p-values (a test that could
    not be run) stay NaN and are not counted in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, NAN)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return out.tolist()


def bounds_of(metric: str) -> tuple[float, float] | None:
    """The range of a bounded metric by its name (``val/dice``, ``test/map40``,
    ``val/loc_acc_iou``, ``classifier/val_auc`` -> (0, 1)), None for any other (a loss, an
    epoch count, ``pretrain/collapse``). See :data:`BOUNDED_WORDS`."""
    words = {
        re.sub(r"(?<=[a-z])\d+$", "", w)
        for w in re.split(r"[_\-.@ ]+", metric.lower().rsplit("/", 1)[-1])
        if w
    }
    if words & UNBOUNDED_WORDS:
        return None
    return UNIT if words & BOUNDED_WORDS else None


def clip_interval(
    low: float, high: float, bounds: tuple[float, float] | None
) -> tuple[float, float, bool]:
    """(low, high) clipped to ``bounds`` and whether either end moved (NaN stays NaN)."""
    if bounds is None or math.isnan(low) or math.isnan(high):
        return low, high, False
    lo, hi = min(max(low, bounds[0]), bounds[1]), max(min(high, bounds[1]), bounds[0])
    return lo, hi, (lo, hi) != (low, high)
