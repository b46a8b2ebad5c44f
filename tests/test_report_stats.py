"""Statistics over repeats against hand computation: mean, sample std, the t-interval, the
paired t-test (closed-form Student t CDF for 4 degrees of freedom) and the exact Wilcoxon
signed-rank p-value (counting sign patterns)."""

import math
from itertools import product

import pytest

from raysuite.report.stats import describe, paired

T_975_DF3 = 3.182  # Student t table, two-sided 95 %, 3 degrees of freedom


def test_describe_mean_std_and_t_interval():
    d = describe([0.70, 0.80, 0.75, 0.65])
    # deviations ±0.025, ±0.075: squares sum to 0.0125; / (n-1) = 0.0041667
    std = math.sqrt(0.0125 / 3)
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.725) and d["std"] == pytest.approx(std)
    half = T_975_DF3 * std / 2
    assert d["ci95_low"] == pytest.approx(0.725 - half, abs=1e-4)
    assert d["ci95_high"] == pytest.approx(0.725 + half, abs=1e-4)
    assert (d["min"], d["max"]) == (0.65, 0.80)


def test_describe_one_value_and_nans():
    one = describe([0.5, float("nan")])
    assert (
        one["n"] == 1 and one["mean"] == 0.5 and one["std"] == 0.0 and math.isnan(one["ci95_low"])
    )
    assert describe([])["n"] == 0 and math.isnan(describe([])["mean"])


def _t_cdf_df4(t: float) -> float:
    """Student t CDF with 4 degrees of freedom, closed form."""
    x = t * t / 4
    return 0.5 + 0.375 * (t / math.sqrt(1 + x)) * (1 - (t * t / (1 + x)) / 12)


def _exact_wilcoxon_p(diffs: list[float]) -> float:
    """Two-sided exact p: sign patterns whose smaller rank sum is at most the observed one."""
    ranks = {abs(d): r for r, d in enumerate(sorted(diffs, key=abs), start=1)}
    observed = min(
        sum(ranks[abs(d)] for d in diffs if d > 0), sum(ranks[abs(d)] for d in diffs if d < 0)
    )
    hits = 0
    for signs in product((1, -1), repeat=len(diffs)):
        pos = sum(r for r, s in zip(ranks.values(), signs, strict=True) if s > 0)
        neg = sum(ranks.values()) - pos
        hits += min(pos, neg) <= observed
    return hits / 2 ** len(diffs)


def test_paired_t_and_wilcoxon_by_hand():
    baseline = [0.75, 0.80, 0.83, 0.60, 0.86]
    diffs = [0.05, 0.10, 0.02, 0.08, -0.01]  # distinct |d|: no ties, Wilcoxon is exact
    candidate = [b + d for b, d in zip(baseline, diffs, strict=True)]
    out = paired(candidate, baseline)
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    t = mean / (sd / math.sqrt(5))
    assert out["n_pairs"] == 5 and out["mean_diff"] == pytest.approx(0.048)
    assert out["t"] == pytest.approx(t) and t == pytest.approx(2.4182, abs=1e-4)
    assert out["p_t"] == pytest.approx(2 * (1 - _t_cdf_df4(t)), rel=1e-4)
    # ranks of |d|: 0.01 -> 1 (the only negative), so W- = 1, W+ = 14; p = 4/32
    assert out["w"] == 1.0
    assert (
        out["p_wilcoxon"] == pytest.approx(_exact_wilcoxon_p(diffs)) and out["p_wilcoxon"] == 0.125
    )


def test_paired_degenerate_cases():
    same = paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["n_pairs"] == 3 and same["mean_diff"] == 0.0
    assert all(math.isnan(same[k]) for k in ("t", "p_t", "w", "p_wilcoxon"))
    shifted = paired([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])  # constant difference: t undefined
    assert math.isnan(shifted["t"]) and shifted["p_wilcoxon"] == pytest.approx(
        0.25
    )  # 2 of 8 patterns
    with_nan = paired([0.6, float("nan")], [0.5, 0.4])
    assert with_nan["n_pairs"] == 1 and math.isnan(with_nan["p_t"])
    with pytest.raises(ValueError, match="length"):
        paired([1.0], [1.0, 2.0])
