"""IoU-based positive crop pairs (seed 001, Algorithm 1).

Two equal square crops are drawn so that their Intersection over Union lies in
``[i_min, i_max]`` (inclusive). Crop 2 is retried up to ``r1`` times per crop 1, crop 1
up to ``r2`` times; when nothing qualifies the last pair is returned and flagged as a
fallback (the seed reports < 0.5 % fallbacks for [0,0] and [0.6,1] with r1=30, r2=4).
``[0, 1]`` accepts every pair: it is plain random cropping.
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
    times and crop 2 up to ``r1`` times per crop 1; the first qualifying crop 2 of the
    first crop 1 that has one is taken, else the last pair drawn (a fallback).

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
    min_inter = math.ceil(two_area * Fraction(lo) / (1 + Fraction(lo)))
    max_inter = math.floor(two_area * Fraction(hi) / (1 + Fraction(hi)))
    dtype = np.int16 if max(height, width, size * size) < 2**15 else np.int64
    hy, hx = height - size + 1, width - size + 1
    fy, fx = rng.integers(0, hy, (r2, n, 1), dtype=dtype), rng.integers(0, hx, (r2, n, 1), dtype=dtype)
    sy, sx = rng.integers(0, hy, (r2, n, r1), dtype=dtype), rng.integers(0, hx, (r2, n, r1), dtype=dtype)
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
    return CropPair(tuple(map(int, first[0])), tuple(map(int, second[0])), float(iou[0]), bool(fallback[0]))


def sample_random_pairs(n: int, height: int, width: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of independent random crops (plain random cropping): first, second (n, 2)."""
    corners = rng.integers(0, np.array([height - size + 1, width - size + 1]), size=(2, n, 2))
    return corners[0], corners[1]
