"""The seed 002 pretraining pool: per-patient caps, exact per-modality caps, 90/5/5 split by
patient, modality totals, intensity normalisation by modality."""

import numpy as np
import pandas as pd
import pytest

from raysuite.data import pool as P


def _rows(prefix: str, patients: dict[str, list[int]], modality: str = "") -> pd.DataFrame:
    """Manifest rows: patient -> the depth of each of its files."""
    rows = []
    for patient, depths in patients.items():
        for i, depth in enumerate(depths):
            rows.append({"sample_id": f"{prefix}{patient}_{i}", "patient_key": patient,
                         "path": f"{patient}/f{i}.nii.gz", "depth": depth, "modality": modality})  # fmt: skip
    return pd.DataFrame(rows)


def test_evenly_spreads_and_keeps_ends():
    assert P.evenly(600, 300)[[0, -1]].tolist() == [0, 599]
    assert len(P.evenly(600, 300)) == 300
    assert P.evenly(5, 9).tolist() == [0, 1, 2, 3, 4]
    assert P.evenly(10, 1).tolist() == [5]
    assert P.evenly(7, 3).tolist() == [0, 3, 6]


def test_slices_per_patient_caps_each_patient_over_all_its_files():
    rows = _rows("c", {"p1": [10, 10], "p2": [4], "p3": [1, 1, 1]}, "CT")
    src = P.Source("ct", "folder", "/r", rows, slices_per_patient=5)
    out = P.source_slices(src)
    per = out.groupby("patient_key").size().to_dict()
    assert per == {"ct:p1": 5, "ct:p2": 4, "ct:p3": 3}
    p1 = out[out.patient_key == "ct:p1"]
    # 20 slices (f0 0..9, f1 0..9), 5 spread evenly: positions 0, 5, 10, 14, 19
    assert list(zip(p1.path, p1.slice, strict=True)) == [
        ("p1/f0.nii.gz", 0), ("p1/f0.nii.gz", 5), ("p1/f1.nii.gz", 0), ("p1/f1.nii.gz", 4), ("p1/f1.nii.gz", 9),
    ]  # fmt: skip
    assert set(out.group) == {"CT"}


def test_luna_candidates_sharing_a_scan_count_once_and_max_patients():
    rows = pd.concat(
        [
            _rows("a", {"s1": [8]}, "CT"),
            _rows("b", {"s1": [8]}, "CT"),
            _rows("c", {"s2": [8], "s3": [8]}, "CT"),
        ]
    )
    out = P.source_slices(P.Source("luna", "luna16", "/r", rows))
    assert len(out) == 24
    two = P.source_slices(P.Source("luna", "luna16", "/r", rows, max_patients=2), seed=3)
    assert two.patient_key.nunique() == 2 and len(two) == 16


def test_water_fill_hits_the_cap_exactly_and_cuts_fairly():
    rng = np.random.default_rng(0)
    out = P.water_fill([100, 3, 50, 10], 40, rng)
    # level k: min(n, k) summed <= 40 -> k = 13 gives 13 + 3 + 13 + 10 = 39, remainder 1
    assert out.sum() == 40 and out[1] == 3 and out[3] == 10
    assert sorted([out[0], out[2]]) == [13, 14]
    assert P.water_fill([5, 5], 100, rng).tolist() == [5, 5]
    assert P.water_fill([5, 5, 5], 2, rng).sum() == 2


def test_build_pool_hits_modality_caps_and_splits_by_patient():
    ct = P.Source(
        "ct",
        "flare22",
        "/ct",
        _rows("c", {f"c{i}": [40] for i in range(30)}, "CT"),
        slices_per_patient=30,
    )
    mr = P.Source(
        "mr",
        "folder",
        "/mr",
        _rows("m", {f"m{i}": [20] for i in range(40)}),
        modality="MR",
        body_part="brain",
    )
    xr = P.Source(
        "cxr", "chestxray14", "/x", _rows("x", {f"x{i}": [1] * (1 + i % 7) for i in range(200)})
    )
    caps = {"CT": 500, "MRI": 500, "XRAY": 500}
    pool = P.build_pool([ct, mr, xr], caps, seed=1)
    totals = pool.groupby("group").size().to_dict()
    assert totals == {"CT": 500, "MRI": 500, "XRAY": 500}
    # no patient lost: 500 slices over 30 / 40 / 200 patients
    assert pool.groupby("group").patient_key.nunique().to_dict() == {
        "CT": 30,
        "MRI": 40,
        "XRAY": 200,
    }
    assert set(pool[pool.source == "mr"].body_part) == {"BRAIN"}
    assert set(pool[pool.source == "cxr"].body_part) == {"CHEST"}
    assert pool.groupby("patient_key").split.nunique().max() == 1
    share = pool.split.value_counts(normalize=True)
    assert abs(share["train"] - 0.9) < 0.03 and share["val"] > 0 and share["test"] > 0
    assert pool.pool_id.is_unique and pool.pool_id.is_monotonic_increasing
    totals_table = P.modality_totals(pool)
    ct_all = totals_table[(totals_table.group == "CT") & (totals_table.body_part == "all")].iloc[0]
    assert (ct_all.slices, ct_all.patients) == (500, 30)
    assert ct_all.train + ct_all.val + ct_all.test == 500


def test_a_folder_without_modality_and_unknown_caps_are_refused_by_name():
    src = P.Source("mystery", "folder", "/m", _rows("m", {"a": [3]}))
    with pytest.raises(P.PoolError, match="mystery"):
        P.source_slices(src)
    ok = P.Source("ct", "folder", "/c", _rows("c", {"a": [3]}, "CT"))
    with pytest.raises(P.PoolError, match="PET"):
        P.build_pool([ok], {"PET": 3})


def test_normalise_by_modality():
    hu = np.array([[-2000, -1000, 200, 1400, 3000]], np.float32)
    assert np.allclose(P.normalise(hu, "CT", False), [[0, 0, 0.5, 1, 1]])
    mr = np.array([[0, 50, 100, 200]], np.float32)
    assert np.allclose(P.normalise(mr, "MRI", False), [[0, 0.25, 0.5, 1]])
    spiky = np.concatenate([np.linspace(0, 100, 999), [10_000]]).astype(np.float32)[None]
    assert P.normalise(spiky, "MRI", False, mri="percentile")[0, 998] == 1.0
    assert P.normalise(spiky, "MRI", False)[0, 998] == pytest.approx(0.01)
    png = np.array([[0, 51, 255]], np.float32)
    assert np.allclose(P.normalise(png, "XRAY", True), [[0, 0.2, 1]])
    dcm = np.array([[1000, 2000, 3000]], np.float32)
    assert np.allclose(P.normalise(dcm, "XRAY", False), [[0, 0.5, 1]])


def test_square_pads_centred_then_resizes():
    image = np.ones((2, 4), np.float32)
    out = P.square(image, 4)
    assert out.shape == (4, 4)
    assert np.allclose(out[0], 0) and np.allclose(out[-1], 0) and np.allclose(out[1:3], 1)
