"""Models Genesis 2-D corruptions (seed 002): each transform checked against values computed here."""

from __future__ import annotations

import numpy as np
import pytest

from raysuite.methods.nn.genesis_transforms import (
    GenesisTransforms,
    Window,
    bezier_curve,
    bezier_lookup,
    bezier_mapping,
    flip_pair,
    in_paint,
    in_paint_mask,
    local_pixel_shuffle,
    local_pixel_shuffle_windows,
    out_paint,
    out_paint_windows,
)

ALL_OFF = dict(flip_rate=0.0, local_rate=0.0, nonlinear_rate=0.0, paint_rate=0.0, inpaint_rate=0.0)


def distinct(h: int = 32, w: int = 32) -> np.ndarray:
    """(h, w) float64 image in [0, 1] with every pixel distinct and no symmetry."""
    return np.arange(h * w, dtype=np.float64).reshape(h, w) / (h * w - 1)


def ramp(h: int = 32, w: int = 32) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w), (h, 1))


def union(windows: list[Window], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for win in windows:
        mask[win.row : win.row + win.height, win.col : win.col + win.width] = True
    return mask


# ----------------------------------------------------------------------------- Bezier


def test_bezier_curve_matches_closed_forms():
    t = np.linspace(0.0, 1.0, 11)
    # collinear, evenly spaced control points: the curve is the identity line x = y = t
    xs, ys = bezier_curve(np.array([[0, 0], [1 / 3, 1 / 3], [2 / 3, 2 / 3], [1, 1]]), 11)
    np.testing.assert_allclose(xs, t, atol=1e-12)
    np.testing.assert_allclose(ys, t, atol=1e-12)
    # quadratic (0,0), (0,1), (1,1): x = t^2, y = 2t - t^2
    xs, ys = bezier_curve(np.array([[0, 0], [0, 1], [1, 1]]), 11)
    np.testing.assert_allclose(xs, t**2, atol=1e-12)
    np.testing.assert_allclose(ys, 2 * t - t**2, atol=1e-12)


def test_bezier_lookup_is_monotone_and_endpoint_preserving():
    seen = set()
    for seed in range(40):
        xs, ys, inverted = bezier_lookup(np.random.default_rng(seed), n=2000)
        seen.add(inverted)
        assert np.all(np.diff(xs) >= 0)
        assert (xs[0], xs[-1]) == (0.0, 1.0)
        if inverted:
            assert np.all(np.diff(ys) <= 0)
            assert (ys[0], ys[-1]) == (1.0, 0.0)
        else:
            assert np.all(np.diff(ys) >= 0)
            assert (ys[0], ys[-1]) == (0.0, 1.0)
    assert seen == {True, False}  # both branches occur (probability 0.5 each)


def test_bezier_lookup_pairs_sorted_x_with_sorted_or_reversed_y():
    """Table = sorted curve x against sorted curve y, reversed when inverted (as the original's
    "sort only x" branch); a 1 - y reflection would be a different curve."""
    for seed in range(10):
        xs, ys, inverted = bezier_lookup(np.random.default_rng(seed), n=500)
        rng = np.random.default_rng(seed)
        c = rng.random((2, 2))  # the two control points, drawn first
        cx, cy = bezier_curve(np.array([[0.0, 0.0], c[0], c[1], [1.0, 1.0]]), 500)
        np.testing.assert_allclose(xs, np.sort(cx), atol=1e-12)
        expected = np.sort(cy)[::-1] if inverted else np.sort(cy)
        np.testing.assert_allclose(ys, expected, atol=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_bezier_mapping_equals_lookup_interp_and_is_monotone(seed):
    img = ramp(8, 64)
    img[0, 0], img[-1, -1] = 0.0, 1.0
    xs, ys, inverted = bezier_lookup(np.random.default_rng(seed), n=5000)
    out = bezier_mapping(img, np.random.default_rng(seed), n=5000)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_allclose(out, np.interp(img, xs, ys), atol=1e-6)
    row = out[0]  # the input row is increasing
    steps = np.diff(row.astype(np.float64))
    assert np.all(steps <= 1e-7) if inverted else np.all(steps >= -1e-7)
    assert (out[0, 0], out[-1, -1]) == ((1.0, 0.0) if inverted else (0.0, 1.0))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, img, atol=1e-3)  # it really remaps


# ----------------------------------------------------------------------- local shuffle


def test_shuffle_single_window_preserves_multiset_and_outside():
    img = distinct()
    rng = np.random.default_rng(3)
    out, windows = local_pixel_shuffle_windows(img, rng, blocks=1, max_fraction=0.5)
    assert len(windows) == 1
    win = windows[0]
    assert 1 <= win.height <= 16 and 1 <= win.width <= 16
    inside = union(windows, img.shape)
    np.testing.assert_array_equal(out[~inside], img[~inside].astype(np.float32))
    np.testing.assert_array_equal(np.sort(out[inside]), np.sort(img[inside].astype(np.float32)))


def test_shuffle_many_windows():
    img = distinct()
    out, windows = local_pixel_shuffle_windows(
        img, np.random.default_rng(0), blocks=40, max_fraction=0.25
    )
    assert len(windows) == 40
    assert all(1 <= w.height <= 8 and 1 <= w.width <= 8 for w in windows)
    assert all(w.row + w.height <= 32 and w.col + w.width <= 32 for w in windows)
    touched = union(windows, img.shape)
    img32 = img.astype(np.float32)
    np.testing.assert_array_equal(out[~touched], img32[~touched])
    # the last window written is never overwritten: exactly its original pixels, permuted
    last = windows[-1].slices
    np.testing.assert_array_equal(np.sort(out[last].ravel()), np.sort(img32[last].ravel()))
    # windows are read from the original: every output pixel is a value from the original
    assert np.isin(out, img32).all()
    assert (out != img32).sum() > 20  # and many pixels really moved


def test_shuffle_windows_do_not_chain():
    """Windows read the ORIGINAL image: a pixel's output comes from the last window covering it."""
    img = distinct(16, 16)
    out, windows = local_pixel_shuffle_windows(
        img, np.random.default_rng(5), blocks=30, max_fraction=0.5
    )
    img32 = img.astype(np.float32)
    owner = np.full(img.shape, -1)
    for k, win in enumerate(windows):
        owner[win.slices] = k
    for k, win in enumerate(windows):
        written = owner[win.slices] == k
        assert np.isin(out[win.slices][written], img32[win.slices]).all()


def test_shuffle_zero_blocks_and_public_wrapper():
    img = distinct()
    out, windows = local_pixel_shuffle_windows(img, np.random.default_rng(0), blocks=0)
    assert windows == [] and np.array_equal(out, img.astype(np.float32))
    a = local_pixel_shuffle(img, np.random.default_rng(9), blocks=50, max_fraction=0.2)
    b, _ = local_pixel_shuffle_windows(img, np.random.default_rng(9), blocks=50, max_fraction=0.2)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ in- / out-painting


@pytest.mark.parametrize("seed", range(6))
def test_in_paint_touches_only_its_mask(seed):
    img = distinct(48, 48)
    img32 = img.astype(np.float32)
    out, mask = in_paint_mask(img, np.random.default_rng(seed), blocks=5, continue_prob=1.0)
    assert out.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_array_equal(out[~mask], img32[~mask])
    assert mask.any()
    assert np.all(out[mask] != img32[mask])  # noise everywhere inside
    assert out.min() >= 0.0 and out.max() < 1.0 + 1e-7
    rows, cols = np.nonzero(mask)
    # published margin: blocks start >= 3 px from the borders and end <= side - 3
    assert rows.min() >= 3 and cols.min() >= 3 and rows.max() <= 44 and cols.max() <= 44
    # each block side in [48 // 6, 48 // 3] = [8, 16]: the masked area is bounded by 5 blocks
    assert 64 <= mask.sum() <= 5 * 16 * 16


def test_in_paint_continuation_zero_is_identity():
    img = distinct()
    out, mask = in_paint_mask(img, np.random.default_rng(0), continue_prob=0.0)
    assert not mask.any() and np.array_equal(out, img.astype(np.float32))
    np.testing.assert_array_equal(in_paint(img, np.random.default_rng(0), continue_prob=0.0), out)


def test_in_paint_single_block_size():
    img = distinct(60, 60)
    _, mask = in_paint_mask(img, np.random.default_rng(1), blocks=1, continue_prob=1.0)
    rows, cols = np.nonzero(mask)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert 10 <= h <= 20 and 10 <= w <= 20  # 60 // 6 .. 60 // 3
    assert mask.sum() == h * w  # one rectangle


@pytest.mark.parametrize("seed", range(6))
def test_out_paint_keeps_exactly_its_windows(seed):
    img = distinct(56, 56)
    img32 = img.astype(np.float32)
    out, windows = out_paint_windows(img, np.random.default_rng(seed))
    assert 1 <= len(windows) <= 5
    kept = union(windows, img.shape)
    np.testing.assert_array_equal(out[kept], img32[kept])
    assert np.all(out[~kept] != img32[~kept])  # noise everywhere else
    assert (~kept).any()
    for win in windows:  # side = 56 - U[3*56//7, 4*56//7] = 56 - U[24, 32]
        assert 24 <= win.height <= 32 and 24 <= win.width <= 32
        assert win.row >= 3 and win.row + win.height <= 53
        assert win.col >= 3 and win.col + win.width <= 53


def test_out_paint_first_window_always_kept():
    img = distinct()
    out, windows = out_paint_windows(img, np.random.default_rng(0), continue_prob=0.0)
    assert len(windows) == 1
    out_b, windows_b = out_paint_windows(img, np.random.default_rng(0), continue_prob=1.0)
    assert len(windows_b) == 5
    np.testing.assert_array_equal(
        out_paint(img, np.random.default_rng(4)),
        out_paint_windows(img, np.random.default_rng(4))[0],
    )


# ---------------------------------------------------------------------------------- flip


def test_flip_pair():
    img = distinct(8, 12)
    x, y = flip_pair(img, img, np.random.default_rng(0), rate=0.0)
    np.testing.assert_array_equal(x, img.astype(np.float32))
    np.testing.assert_array_equal(y, img.astype(np.float32))
    for seed in range(10):
        x, y = flip_pair(img, img * 0.5, np.random.default_rng(seed), rate=1.0)
        # three flips over two axes always leave exactly one axis flipped
        candidates = [np.flip(img, 0), np.flip(img, 1)]
        assert any(np.array_equal(x, c.astype(np.float32)) for c in candidates)
        np.testing.assert_array_equal(y, x * 0.5)  # target flipped the same way
    # with one flip allowed, both axes occur across seeds
    axes = set()
    for seed in range(20):
        x, _ = flip_pair(img, img, np.random.default_rng(seed), rate=1.0, max_flips=1)
        axes |= {a for a in (0, 1) if np.array_equal(x, np.flip(img, a).astype(np.float32))}
    assert axes == {0, 1}
    with pytest.raises(ValueError, match="shapes differ"):
        flip_pair(img, img.T, np.random.default_rng(0))


# ------------------------------------------------------------------------- combination


def test_published_defaults():
    t = GenesisTransforms()
    assert (t.flip_rate, t.local_rate, t.nonlinear_rate, t.paint_rate) == (0.4, 0.5, 0.9, 0.9)
    assert t.inpaint_rate == pytest.approx(1.0 - 0.8)
    assert (t.inpaint_blocks, t.outpaint_blocks, t.paint_continue) == (5, 5, 0.95)
    assert t.inpaint_min_fraction == pytest.approx(1 / 6)
    assert t.inpaint_max_fraction == pytest.approx(1 / 3)
    assert t.outpaint_min_fraction == pytest.approx(3 / 7)
    assert t.outpaint_max_fraction == pytest.approx(4 / 7)
    assert (t.shuffle_max_fraction, t.paint_margin, t.max_flips) == (0.1, 3, 3)
    assert t.bezier_samples == 100_000
    assert set(t.as_dict()) >= set(ALL_OFF) | {"shuffle_blocks", "paint_continue"}


def test_pair_all_off_is_identity():
    img = distinct()
    before = img.copy()
    x, y = GenesisTransforms(**ALL_OFF).pair(img, np.random.default_rng(0))
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x, img.astype(np.float32))
    np.testing.assert_array_equal(y, img.astype(np.float32))
    assert x is not y and not np.shares_memory(x, y)
    np.testing.assert_array_equal(img, before)  # input untouched


def test_pair_flip_only_flips_both():
    img = distinct(20, 24)
    t = GenesisTransforms(**{**ALL_OFF, "flip_rate": 1.0})
    for seed in range(6):
        x, y = t.pair(img, np.random.default_rng(seed))
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(y, img.astype(np.float32))
        assert any(np.array_equal(y, np.flip(img, a).astype(np.float32)) for a in (0, 1))


def test_pair_single_stages_match_the_functions():
    """Each gate fired alone equals the stage function fed the same stream after the gates."""
    img = distinct()
    img32 = img.astype(np.float32)
    # local only: gates drawn = flip (1 draw, fails), local (1 draw, fires)
    t = GenesisTransforms(**{**ALL_OFF, "local_rate": 1.0}, shuffle_blocks=30)
    x, y = t.pair(img, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    rng.random(2)
    np.testing.assert_array_equal(x, local_pixel_shuffle(img, rng, 30, 0.1))
    np.testing.assert_array_equal(y, img32)
    # out-paint only: flip, local, nonlinear, paint (fires), inpaint (fails -> out-paint)
    t = GenesisTransforms(**{**ALL_OFF, "paint_rate": 1.0})
    x, y = t.pair(img, np.random.default_rng(8))
    rng = np.random.default_rng(8)
    rng.random(5)
    np.testing.assert_array_equal(x, out_paint(img, rng))
    np.testing.assert_array_equal(y, img32)
    # in-paint only
    t = GenesisTransforms(**{**ALL_OFF, "paint_rate": 1.0, "inpaint_rate": 1.0})
    x, _ = t.pair(img, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    rng.random(5)
    np.testing.assert_array_equal(x, in_paint(img, rng))


@pytest.mark.parametrize("seed", range(8))
def test_pair_defaults_dtype_range_and_determinism(seed):
    img = ramp(64, 64)
    t = GenesisTransforms()
    x, y = t.pair(img, np.random.default_rng(seed))
    x2, y2 = t.pair(img, np.random.default_rng(seed))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x.shape == y.shape == img.shape
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # target is the (possibly flipped) clean image
    assert any(
        np.array_equal(y, c.astype(np.float32))
        for c in (img, np.flip(img, 0), np.flip(img, 1), np.flip(np.flip(img, 0), 1))
    )


def test_pair_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        GenesisTransforms().pair(np.zeros((2, 8, 8)), np.random.default_rng(0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("flip_rate", -0.1),
        ("local_rate", 1.5),
        ("nonlinear_rate", float("nan")),
        ("paint_rate", 2),
        ("inpaint_rate", -1e-9),
        ("paint_continue", 1.01),
        ("shuffle_blocks", -1),
        ("shuffle_blocks", 2.5),
        ("shuffle_blocks", True),
        ("shuffle_max_fraction", 0.0),
        ("inpaint_blocks", -3),
        ("inpaint_min_fraction", 0.0),
        ("inpaint_max_fraction", 1.2),
        ("outpaint_blocks", 0),
        ("outpaint_min_fraction", -0.5),
        ("outpaint_max_fraction", 1.5),
        ("paint_margin", -1),
        ("max_flips", -1),
        ("bezier_samples", 1),
    ],
)
def test_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GenesisTransforms(**{field: value})


def test_validation_min_above_max():
    with pytest.raises(ValueError, match="inpaint_min_fraction"):
        GenesisTransforms(inpaint_min_fraction=0.5, inpaint_max_fraction=0.4)
    with pytest.raises(ValueError, match="outpaint_min_fraction"):
        GenesisTransforms(outpaint_min_fraction=0.6, outpaint_max_fraction=0.5)


def test_frozen():
    t = GenesisTransforms()
    with pytest.raises(AttributeError, match="cannot assign to field 'flip_rate'"):
        t.flip_rate = 0.1  # type: ignore[misc]
