"""The report's tables against hand computation: Holm-adjusted p-values of the comparisons
against the baseline (closed-form Student t for 2 degrees of freedom, exact Wilcoxon) and a
bounded metric's interval clipped to [0, 1]."""

import json
import math

import pandas as pd
import pytest

from raysuite.report.tables import baseline_comparison, summary_table

BASE = [0.5, 0.6, 0.7]
DIFFS = {"a": [0.05, 0.07, 0.01], "b": [0.01, -0.02, 0.03]}


def _p_t_df2(diffs: list[float]) -> float:
    """Two-sided paired-t p-value with 3 pairs: 1 - |t| / sqrt(2 + t^2) (t CDF, 2 d.o.f.)."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    return 1 - abs(t) / math.sqrt(2 + t * t)


def _trials() -> pd.DataFrame:
    rows = [
        {"config_id": cid, "config": arm, "repeat": json.dumps({"fold": f}), "param.search.arm": arm,
         "objective": base + (DIFFS[arm][f] if arm in DIFFS else 0.0)}
        for cid, arm in (("c0", "baseline"), ("c1", "a"), ("c2", "b"))
        for f, base in enumerate(BASE)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_comparison_gives_holm_adjusted_p_values():
    table = baseline_comparison(_trials(), "baseline").set_index("config")
    p_a, p_b = _p_t_df2(DIFFS["a"]), _p_t_df2(DIFFS["b"])
    assert p_a == pytest.approx(0.1333, abs=1e-4) and p_b == pytest.approx(0.6914, abs=1e-4)
    assert table.loc["a", "p_t"] == pytest.approx(p_a) and table.loc["b", "p_t"] == pytest.approx(
        p_b
    )
    # Holm over the 2 configurations: smallest x 2, then the larger x 1 (not below the first)
    assert table.loc["a", "p_t_holm"] == pytest.approx(2 * p_a)
    assert table.loc["b", "p_t_holm"] == pytest.approx(p_b)
    # Wilcoxon: a's 3 differences all positive -> 2 of 8 sign patterns, p = 0.25; b's ranks
    # 1 (+), 2 (-), 3 (+): W- = 2, patterns with min(W+, W-) <= 2: 6 of 8, p = 0.75
    assert table.loc["a", "p_wilcoxon"] == pytest.approx(0.25)
    assert table.loc["b", "p_wilcoxon"] == pytest.approx(0.75)
    assert table.loc["a", "p_wilcoxon_holm"] == pytest.approx(0.5)
    assert table.loc["b", "p_wilcoxon_holm"] == pytest.approx(0.75)
    assert list(table.columns).index("p_t_holm") == list(table.columns).index("p_t") + 1


def test_bounded_interval_is_clipped_and_flagged():
    # Dice 0.99, 0.999, 0.95: mean 0.97967; squares of the deviations sum to 1.36067e-3, the
    # sample std is sqrt(/2) = 0.026083 and t(0.975, 2) x s / sqrt(3) = 0.06480: the interval
    # (0.91487, 1.04447) runs past 1 and is shown as (0.91487, 1)
    values = [0.99, 0.999, 0.95]
    losses = [0.01, 0.2, 0.02]  # a loss is not bounded: its interval keeps its negative end
    trials = pd.DataFrame({"config_id": "c0", "config": "x", "objective": values,
                           "val/dice": values, "finetune/loss": losses,
                           "start_time": 0, "end_time": 0})  # fmt: skip
    row = summary_table(trials, ["val/dice", "finetune/loss"], {}, "val/dice").iloc[0]
    assert row["mean"] == pytest.approx(0.979667, abs=1e-6)
    assert row.ci95_high == 1.0 and bool(row.ci95_clipped)
    assert row.ci95_low == pytest.approx(0.979667 - 4.303 * 0.026083 / math.sqrt(3), abs=1e-4)
    assert row["val/dice ci95_high"] == 1.0 and bool(row["val/dice ci95_clipped"])
    assert row["finetune/loss ci95_low"] < 0 and not row["finetune/loss ci95_clipped"]
    unnamed = summary_table(trials, [], {}).iloc[0]  # no objective name: nothing to clip by
    assert unnamed.ci95_high > 1.04 and not unnamed.ci95_clipped


def test_method_tables_print_the_ddof_0_std():
    """:func:`summarise` (the methods' own tables: Figure 5.1, Table 5.1, ...) prints the
    std as seed 001's Table 4.2 does: (0.7, 0.8) -> 0.05, not 0.05 x sqrt(2)."""
    from raysuite.report.summary import summarise

    trials = pd.DataFrame({"config_id": ["c0", "c0", "c1"], "config": ["x", "x", "y"],
                           "objective": [0.7, 0.8, 0.6]})  # fmt: skip
    table = summarise(trials).set_index("config")
    assert (
        table.loc["x", "std"] == pytest.approx(0.05)
        and table.loc["x", "mean ± std"] == "0.7500 ± 0.0500"
    )
    assert table.loc["y", "std"] == 0.0 and table.loc["y", "mean ± std"] == "0.6000 (n=1)"


@pytest.mark.parametrize("order", [1, -1], ids=["as-run", "reversed"])
def test_the_baseline_is_the_one_equal_on_the_least_varied_settings(order):
    """Seed 002's cells each carry their own schedule: genesis VGG-16 on MURA (11 epochs)
    agrees with scratch ResNet-50 on MURA (11 epochs) on as many settings as with scratch
    VGG-16 on MURA (8 epochs); the encoder, varied less, decides, whatever the trial order."""
    cells = {  # config: (init, encoder, task, epochs)
        "genesis-vgg": ("genesis", "vgg16_bn", "mura", 11),
        "scratch-vgg": ("scratch", "vgg16_bn", "mura", 8),
        "scratch-r50": ("scratch", "resnet50", "mura", 11),
        "genesis-r50": ("genesis", "resnet50", "mura", 9),
        "scratch-vgg-luna": ("scratch", "vgg16_bn", "luna16", 13),
    }
    rows = [
        {"config_id": name, "config": name, "repeat": json.dumps({"fold": f}), "objective": 0.5 + f / 10,
         "param.stages.pretrain.init": json.dumps(init), "param.stages.pretrain.encoder": json.dumps(encoder),
         "param.stages.finetune.task": json.dumps(task), "param.stages.finetune.epochs": json.dumps(epochs)}
        for name, (init, encoder, task, epochs) in cells.items()
        for f in range(2)
    ][::order]  # fmt: skip
    table = baseline_comparison(pd.DataFrame(rows), {"pretrain.init": "scratch"}).set_index("config")
    assert table.loc["genesis-vgg", "baseline"] == "scratch-vgg"
    assert table.loc["genesis-r50", "baseline"] == "scratch-r50"
