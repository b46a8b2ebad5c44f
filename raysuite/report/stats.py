"""Statistics over repeats: mean, sample std, a 95 % confidence interval of the mean, and
paired tests of a configuration against its baseline over the seeds / folds they share.

The seeds report mean ± std over a handful of repeats (seed 001's Table 4.2: four runs;
seed 004's Table 5.1: five folds). With so few repeats the interval uses Student's t:
``mean ± t_{0.975, n-1} · std / √n``; one repeat has no interval (NaN). Two
configurations run on the same seeds or folds are compared pairwise, which removes the
between-fold spread both share: the paired t-test on the differences and the Wilcoxon
signed-rank test (no normality assumed; with n ≤ 5 pairs its smallest two-sided p-value is
0.0625, so it cannot reach 0.05 — the report says how many pairs each test had).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as st

NAN = float("nan")


def describe(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """n, mean, std (ddof=1; 0 for one value), min, max and the ``level`` t-interval of the
    mean (``ci95_low``/``ci95_high``; NaN for fewer than two values). NaNs are dropped."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {
            "n": 0,
            "mean": NAN,
            "std": NAN,
            "min": NAN,
            "max": NAN,
            "ci95_low": NAN,
            "ci95_high": NAN,
        }
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    half = float(st.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n) if n > 1 else NAN
    return {"n": n, "mean": mean, "std": std, "min": float(x.min()), "max": float(x.max()),
            "ci95_low": mean - half, "ci95_high": mean + half}  # fmt: skip


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
        w = st.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out["w"], out["p_wilcoxon"] = float(w.statistic), float(w.pvalue)
    return out
