"""The label-fraction curve from a table of finished trials (as the sweep's MLflow has them)."""

import pandas as pd
import pytest

from raysuite.report.curves import label_fraction_curve


def test_curve_groups_repeats_by_labelled_fraction(tmp_path):
    trials = pd.DataFrame(
        {
            "param.stages.pretrain.fraction": ["0.0", "0.0", "0.3", "0.3", "0.6"],
            "objective": [0.40, 0.50, 0.30, 0.34, 0.20],
        }
    )
    path = label_fraction_curve(trials, "stages.pretrain.fraction", "val/map40", tmp_path)
    assert path == tmp_path / "label_fraction_curve.png" and path.stat().st_size > 0
    stats = pd.read_csv(tmp_path / "label_fraction_curve.csv").set_index("labelled")
    assert (
        stats.loc[1.0, "mean"] == pytest.approx(0.45) and stats.loc[1.0, "count"] == 2
    )  # baseline
    assert stats.loc[0.7, "mean"] == pytest.approx(0.32) and stats.loc[0.7, "std"] == pytest.approx(
        0.02
    )  # ddof 0: |0.30 - 0.32|
    assert stats.loc[0.4, "count"] == 1 and stats.loc[0.4, "std"] == 0.0
    assert label_fraction_curve(trials, "stages.other", "val/map40", tmp_path) is None
