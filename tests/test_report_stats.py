"""Statistics over repeats against hand computation: mean, the printed std (ddof = 0, as seed
001's Table 4.2), the t-interval on the sample std, the paired t-test (closed-form Student t
CDF for 4 degrees of freedom) and the exact Wilcoxon signed-rank p-value (counting sign
patterns), Holm's adjustment, and the clipped interval of a bounded metric."""

import math
from itertools import product

import pytest

from raysuite.report.stats import bounds_of, clip_interval, describe, holm, paired

T_975_DF3 = 3.182  # Student t table, two-sided 95 %, 3 degrees of freedom


def test_describe_mean_std_and_t_interval():
    d = describe([0.70, 0.80, 0.75, 0.65])
    # deviations ±0.025, ±0.075: squares sum to 0.0125; / n = 0.003125 (printed std, ddof 0),
    # / (n-1) = 0.0041667 (the sample std the t-interval is defined on)
    std, sample_std = math.sqrt(0.0125 / 4), math.sqrt(0.0125 / 3)
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.725) and d["std"] == pytest.approx(std)
    assert std == pytest.approx(0.055902, abs=1e-6) and d["sample_std"] == pytest.approx(sample_std)
    half = T_975_DF3 * sample_std / 2
    assert d["ci95_low"] == pytest.approx(0.725 - half, abs=1e-4)
    assert d["ci95_high"] == pytest.approx(0.725 + half, abs=1e-4)
    assert (d["min"], d["max"]) == (0.65, 0.80)


def test_describe_one_value_and_nans():
    one = describe([0.5, float("nan")])
    assert (
        one["n"] == 1 and one["mean"] == 0.5 and one["std"] == 0.0 and math.isnan(one["ci95_low"])
    )
    assert math.isnan(one["sample_std"])
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


# Seed 001, Table 4.2: (printed mean ± std, the four runs' DSC as listed)
TABLE_4_2 = {
    "-": (0.843, 0.004, [0.842, 0.848, 0.846, 0.836]),
    "[0, 0]": (0.838, 0.007, [0.836, 0.831, 0.834, 0.850]),
    "[0.0001, 0.3]": (0.839, 0.012, [0.847, 0.831, 0.855, 0.824]),
    "[0.3, 0.6]": (0.853, 0.002, [0.854, 0.851, 0.851, 0.857]),
    "[0.6, 1]": (0.843, 0.013, [0.850, 0.855, 0.848, 0.822]),
    "Random crop.": (0.824, 0.011, [0.815, 0.841, 0.828, 0.812]),
}


def test_printed_std_is_seed_001s_ddof_0():
    # row "-": mean 0.843, deviations -0.001, 0.005, 0.003, -0.007: squares sum to 84e-6;
    # / 4 = 21e-6 -> 0.0045826 (ddof 0); / 3 = 28e-6 -> 0.0052915 (ddof 1, the interval's)
    d = describe([0.842, 0.848, 0.846, 0.836])
    assert d["mean"] == pytest.approx(0.843)
    assert d["std"] == pytest.approx(0.0045826, abs=1e-7)
    assert d["sample_std"] == pytest.approx(0.0052915, abs=1e-7)
    assert d["ci95_high"] - d["mean"] == pytest.approx(T_975_DF3 * 0.0052915 / 2, abs=1e-5)
    # every row: the ddof-0 std of the listed (3-decimal) runs is within 0.0006 of the printed
    # std (the runs' rounding); the ddof-1 std is at least 0.0008 off in every row
    for label, (mean, printed, runs) in TABLE_4_2.items():
        d = describe(runs)
        assert abs(d["mean"] - mean) <= 0.001, label  # 0.84375 printed 0.843
        assert abs(d["std"] - printed) <= 0.0006, label
        assert abs(d["sample_std"] - printed) >= 0.0008, label


def test_holm_step_down_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> max so far 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.5]) == pytest.approx([0.6, 0.6])  # 0.5 x 1 < 0.6: monotone
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    out = holm([float("nan"), 0.02, 0.04])  # a test that could not run is not in the family
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.04, 0.04])
    assert holm([]) == [] and holm([0.2]) == pytest.approx([0.2])


@pytest.mark.parametrize(
    "metric",
    ["val/dice", "test/map40", "val/map50", "val/auc", "classifier/val_auc", "val/accuracy",
     "val/loc_acc_iou", "val/loc_acc_ior", "segmenter/val_iou", "val/dice_per_image",
     "val/dice_organs", "val/f1", "val/precision", "val/recall", "val/sensitivity",
     "val/specificity", "pretrain/top1"],
)  # fmt: skip
def test_bounded_metrics_by_name(metric):
    assert bounds_of(metric) == (0.0, 1.0)


@pytest.mark.parametrize(
    "metric",
    ["val/loss", "finetune/loss", "finetune/bce", "pretrain/val_mse", "pretrain/collapse",
     "predict/seconds", "pretrain/images_per_s", "val/dice_loss", "posthoc/min_area", "objective"],
)  # fmt: skip
def test_unbounded_metrics_by_name(metric):
    assert bounds_of(metric) is None


def test_clip_interval():
    assert clip_interval(0.91, 1.04, (0.0, 1.0)) == (0.91, 1.0, True)
    assert clip_interval(-0.02, 0.3, (0.0, 1.0)) == (0.0, 0.3, True)
    assert clip_interval(0.2, 0.3, (0.0, 1.0)) == (0.2, 0.3, False)
    assert clip_interval(-0.5, 0.3, None) == (-0.5, 0.3, False)
    low, high, clipped = clip_interval(float("nan"), float("nan"), (0.0, 1.0))
    assert math.isnan(low) and math.isnan(high) and not clipped
