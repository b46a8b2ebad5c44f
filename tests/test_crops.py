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


def _exact_fallback_rate(side: int, size: int, min_inter: int, r1: int = 30, r2: int = 4) -> float:
    """Algorithm 1's fallback probability on a ``side`` x ``side`` slice with crop 2 uniform
    within ±(size - 1) px of crop 1 (clipped): (E_crop1[(1 - p)^r1])^r2, where p is the
    share of crop 1's window whose overlap area is >= ``min_inter`` (upper bound IoU 1)."""
    d = np.arange(-(size - 1), size)  # crop-2 offset along one axis
    overlap = size - np.abs(d)
    ok = (overlap[:, None] * overlap[None, :] >= min_inter).astype(np.int64)
    table = np.zeros((len(d) + 1, len(d) + 1), np.int64)  # 2-D prefix sums of ok
    table[1:, 1:] = ok.cumsum(0).cumsum(1)
    corner = np.arange(side - size + 1)
    low, high = np.maximum(corner - (size - 1), 0), np.minimum(corner + size - 1, side - size)
    a, b = low - corner + size - 1, high - corner + size  # window as [a, b) into d
    hits = table[b[:, None], b] - table[a[:, None], b] - table[b[:, None], a] + table[a[:, None], a]
    p = hits / np.outer(b - a, b - a)
    return float(((1 - p) ** r1).mean() ** r2)


def test_high_interval_falls_back_below_the_seed_rate_on_flare22_slices():
    # 96 px crops (the seed's sliding window and minimum padded size, §4.3/§4.5) on 512 px
    # slices. IoU >= 0.6 means overlap >= 2 * 96^2 * 0.6 / 1.6 = 6912 px.
    size, side, n = 96, 512, 200_000
    exact = _exact_fallback_rate(side, size, 6912)
    assert exact < 0.005  # seed §4.5: "below 0.5% of all pairs" for [0.6, 1.0]
    first, second, iou, fallback = sample_pairs(n, side, side, size, (0.6, 1.0), np.random.default_rng(0))
    measured = fallback.mean()
    assert abs(measured - exact) < 4 * np.sqrt(exact * (1 - exact) / n)  # drawing crop 2 anywhere: 43 %
    # every accepted pair lies in the interval, IoU recomputed from the corners (eq. 3.1)
    inter = np.prod(np.maximum(size - np.abs(first - second), 0), axis=1)
    recomputed = inter / (2 * size * size - inter)
    assert np.array_equal(recomputed, iou)
    assert ((recomputed >= 0.6) & (recomputed <= 1.0))[~fallback].all()
    assert (np.abs(first - second) <= size - 1).all()  # i_min > 0: crop 2 near crop 1, fallbacks too


def test_seed_intervals_with_overlap_never_fall_back_on_flare22_slices():
    for interval in [(0.0001, 0.3), (0.3, 0.6)]:
        _, _, iou, fallback = sample_pairs(20_000, 512, 512, 96, interval, np.random.default_rng(2))
        assert not fallback.any()
        assert ((iou >= interval[0]) & (iou <= interval[1])).all()


def test_zero_lower_bound_draws_crop_two_anywhere():
    # [0, 0] needs disjoint crops; [0, 0.5] must still reach IoU 0 (crop 2 beyond 95 px)
    for interval in [(0.0, 0.0), (0.0, 0.5)]:
        first, second, iou, fallback = sample_pairs(2000, 512, 512, 96, interval, np.random.default_rng(3))
        assert fallback.mean() < 0.005  # seed §4.5 for [0, 0]
        assert (iou == 0).any() and (np.abs(first - second).max(1) > 2 * 95).any()


@pytest.mark.parametrize(
    ("side", "interval", "offset"),
    [
        # 20 px crops, 5 px apart: overlap 20 * 15 = 300, IoU 300 / (800 - 300) = 0.6 exactly;
        # 4 px apart gives 320 / 480 = 2/3, so only the bound itself qualifies
        (20, (0.3, 0.6), 5),
        # 11 px crops, 9 px apart: overlap 11 * 2 = 22, IoU 22 / (242 - 22) = 0.1 exactly;
        # 8 px apart gives 33 / 209 = 0.158 > 0.12
        (11, (0.1, 0.12), 9),
    ],
)
def test_decimal_bounds_are_inclusive_exactly(side, interval, offset):
    size = side
    assert square_iou((0, 0), (0, offset), size) in interval  # the float IoU equals the bound
    first, second, iou, fallback = sample_pairs(500, size, size + offset, size, interval, np.random.default_rng(4))
    assert (~fallback).sum() > 100  # float(0.6) < 3/5 and float(0.1) > 1/10 would reject them all
    assert (np.abs(first - second)[~fallback] == [0, offset]).all()
    assert (iou[~fallback] == square_iou((0, 0), (0, offset), size)).all()


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
