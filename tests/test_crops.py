import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raysuite.data.crops import sample_pair, sample_pairs, sample_random_pairs, square_iou


def test_square_iou_by_hand():
    assert square_iou((0, 0), (0, 0), 10) == 1.0
    assert square_iou((0, 0), (0, 10), 10) == 0.0
    # half overlap along x: intersection 50, union 150
    assert square_iou((0, 0), (0, 5), 10) == pytest.approx(50 / 150)
    # 5x5 corner overlap: 25 / (200 - 25)
    assert square_iou((0, 0), (5, 5), 10) == pytest.approx(25 / 175)


intervals = st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted).map(tuple)


@settings(max_examples=200, deadline=None)
@given(interval=intervals, size=st.integers(8, 64), extra=st.integers(0, 200), seed=st.integers(0, 2**32 - 1))
def test_accepted_pairs_lie_in_interval(interval, size, extra, seed):
    pair = sample_pair(size + extra, size + extra // 2, size, interval, np.random.default_rng(seed))
    assert pair.iou == pytest.approx(square_iou(pair.first, pair.second, size))
    if not pair.fallback:
        assert interval[0] <= pair.iou <= interval[1]
    for top, left in (pair.first, pair.second):
        assert 0 <= top <= extra and 0 <= left <= extra // 2


def test_random_cropping_interval_never_falls_back():
    rng = np.random.default_rng(0)
    assert not any(sample_pair(512, 512, 96, (0.0, 1.0), rng).fallback for _ in range(2000))


def test_seed_intervals_fall_back_rarely_on_ct_sized_slices():
    rng = np.random.default_rng(1)
    for interval in [(0.0, 0.0), (0.0001, 0.3), (0.3, 0.6)]:
        assert sum(sample_pair(400, 400, 96, interval, rng).fallback for _ in range(2000)) <= 10
    # [0.6, 1] needs near-coincident crops: rare on big slices, easy on small ones
    big = sum(sample_pair(400, 400, 96, (0.6, 1.0), rng).fallback for _ in range(2000)) / 2000
    small = sum(sample_pair(160, 160, 96, (0.6, 1.0), rng).fallback for _ in range(2000)) / 2000
    assert small < 0.005 < big


def test_infeasible_interval_falls_back_to_last_pair():
    # a 96 px crop in a 96 px image: IoU is always 1, so [0, 0.5] can never be met
    pair = sample_pair(96, 96, 96, (0.0, 0.5), np.random.default_rng(0))
    assert pair.fallback and pair.iou == 1.0


def test_too_small_image_is_refused():
    with pytest.raises(ValueError, match="smaller than"):
        sample_pair(64, 200, 96, (0.3, 0.6), np.random.default_rng(0))


def test_batched_pairs_respect_interval_and_bounds():
    first, second, iou, fallback = sample_pairs(500, 300, 200, 96, (0.3, 0.6), np.random.default_rng(0))
    assert first.shape == second.shape == (500, 2)
    for a, b, value in zip(first, second, iou, strict=True):
        assert value == pytest.approx(square_iou(tuple(a), tuple(b), 96))
    assert ((iou >= 0.3) & (iou <= 0.6) | fallback).all()
    assert (first >= 0).all() and (first[:, 0] <= 204).all() and (first[:, 1] <= 104).all()


def test_random_pairs_are_plain_cropping():
    first, second = sample_random_pairs(1000, 200, 200, 96, np.random.default_rng(0))
    ious = np.array([square_iou(tuple(a), tuple(b), 96) for a, b in zip(first, second, strict=True)])
    assert (ious == 0).any() and (ious > 0.6).any()  # the whole range, unconstrained
