"""IoU-based positive crop pairs (seed 001, Algorithm 1).

Two equal square crops are drawn so that their Intersection over Union lies in
``[i_min, i_max]`` (inclusive). Crop 2 is retried up to ``r1`` times per crop 1, crop 1
up to ``r2`` times; when nothing qualifies the last pair is returned and flagged as a
fallback (the seed reports < 0.5 % fallbacks for [0,0] and [0.6,1] with r1=30, r2=4, §4.5).
``[0, 1]`` accepts every pair: it is plain random cropping.

When ``i_min > 0`` a qualifying crop 2 must overlap crop 1, so its corner is drawn within
``±(size - 1)`` px of crop 1's (clipped to the image), as the authors' code does; drawing it
anywhere on a 512 px slice leaves [0.6, 1] unmet for 43 % of the pairs instead of 0.49 %.
When ``i_min == 0`` crop 2 is drawn anywhere, so that IoU 0 stays possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

Box = tuple[int, int]  # (top, left) of a size x size crop


@dataclass(frozen=True)
class CropPair:
    first: Box
    second: Box
    iou: float
    fallback: bool


def square_iou(a: Box, b: Box, size: int) -> float:
    """IoU (eq. 3.1) of two ``size`` x ``size`` crops given their top-left corners."""
    dy = size - abs(a[0] - b[0])
    dx = size - abs(a[1] - b[1])
    if dy <= 0 or dx <= 0:
        return 0.0
    inter = dy * dx
    return inter / (2 * size * size - inter)


def _exact(x: float) -> Fraction:
    """The decimal ``x`` as written (``0.6`` -> 3/5), not its binary float (just below 3/5).

    IoU of integer-pixel crops is rational, so a spec bound of 0.6 must admit IoU = 3/5.
    """
    return Fraction(str(x))


def _second_corner(
    first: np.ndarray, positions: int, size: int, near: bool, r1: int, rng: np.random.Generator
) -> np.ndarray:
    """Crop 2's corner along one axis, ``r1`` tries per crop 1: (r2, n, 1) -> (r2, n, r1).

    ``near``: uniform in ``[first - (size - 1), first + (size - 1)]`` clipped to
    ``[0, positions - 1]``; else uniform over all ``positions``.
    """
    shape = (*first.shape[:-1], r1)
    if not near:
        return rng.integers(0, positions, shape, dtype=first.dtype)
    low = np.maximum(first - (size - 1), 0)
    high = np.minimum(first + size, positions)  # exclusive
    return rng.integers(low, high, shape, dtype=first.dtype)


def sample_pairs(
    n: int,
    height: int,
    width: int,
    size: int,
    interval: tuple[float, float],
    rng: np.random.Generator,
    r1: int = 30,
    r2: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Algorithm 1 for ``n`` pairs at once: for each pair, crop 1 is drawn up to ``r2``
    times and crop 2 up to ``r1`` times per crop 1 (within ``±(size - 1)`` px of crop 1
    when ``i_min > 0``); the first qualifying crop 2 of the first crop 1 that has one is
    taken, else the last pair drawn (a fallback). IoU is eq. 3.1; the bounds are inclusive
    and read as the decimals they are written as (:func:`_exact`).

    All ``r2 * (r1 + 1)`` corners of every pair are drawn in one vectorised call and the
    first qualifying try is taken: the same distribution as drawing them one by one, without
    the per-try cost (``benchmarks/crop_sampler.py``).
    Returns ``first (n, 2)``, ``second (n, 2)`` top-left corners, ``iou (n,)`` and
    ``fallback (n,)`` bool. ``height``/``width`` must be >= ``size``.
    """
    if height < size or width < size:
        raise ValueError(f"image {height}x{width} is smaller than the {size}px crop")
    lo, hi = interval
    two_area = 2 * size * size
    # IoU = inter / (2 s^2 - inter) is monotone in the integer overlap area, so the interval
    # becomes integer bounds on it: no division over the candidate array.
    # (exact rationals: the bounds are inclusive and must not move by a rounding error)
    lo_q, hi_q = _exact(lo), _exact(hi)
    min_inter = math.ceil(two_area * lo_q / (1 + lo_q))
    max_inter = math.floor(two_area * hi_q / (1 + hi_q))
    dtype = np.int16 if max(height, width, size * size) < 2**15 else np.int64
    hy, hx = height - size + 1, width - size + 1
    fy, fx = rng.integers(0, hy, (r2, n, 1), dtype=dtype), rng.integers(0, hx, (r2, n, 1), dtype=dtype)
    near = lo_q > 0  # only an overlapping crop 2 can qualify
    sy, sx = _second_corner(fy, hy, size, near, r1, rng), _second_corner(fx, hx, size, near, r1, rng)
    inter = np.maximum(size - np.abs(sy - fy), 0) * np.maximum(size - np.abs(sx - fx), 0)  # (r2, n, r1)
    ok = ((inter >= min_inter) & (inter <= max_inter)).transpose(1, 0, 2).reshape(n, r2 * r1)
    hit = ok.any(1)
    # Tries are ordered (crop 1 round, crop 2 try): the first qualifying one is Algorithm 1's
    # return; without one, the very last pair drawn.
    k = np.where(hit, ok.argmax(1), r2 * r1 - 1)
    p, q = np.divmod(k, r1)
    cols = np.arange(n)
    first = np.stack([fy[p, cols, 0], fx[p, cols, 0]], 1).astype(np.int64)
    second = np.stack([sy[p, cols, q], sx[p, cols, q]], 1).astype(np.int64)
    chosen = inter[p, cols, q].astype(np.float64)
    return first, second, chosen / (two_area - chosen), ~hit


def sample_pair(
    height: int,
    width: int,
    size: int,
    interval: tuple[float, float],
    rng: np.random.Generator,
    r1: int = 30,
    r2: int = 4,
) -> CropPair:
    """One pair by Algorithm 1 (see :func:`sample_pairs`)."""
    first, second, iou, fallback = sample_pairs(1, height, width, size, interval, rng, r1, r2)
    (t1, l1), (t2, l2) = first[0], second[0]  # (1, 2) arrays: one (top, left) each
    return CropPair((int(t1), int(l1)), (int(t2), int(l2)), float(iou[0]), bool(fallback[0]))


def sample_random_pairs(n: int, height: int, width: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of independent random crops (plain random cropping): first, second (n, 2)."""
    corners = rng.integers(0, np.array([height - size + 1, width - size + 1]), size=(2, n, 2))
    return corners[0], corners[1]
