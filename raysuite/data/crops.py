"""IoU-based positive crop pairs (seed 001, Algorithm 1).

Two equal square crops are drawn so that their Intersection over Union lies in
``[i_min, i_max]`` (inclusive). Crop 2 is retried up to ``r1`` times per crop 1, crop 1
up to ``r2`` times; when nothing qualifies the last pair is returned and flagged as a
fallback (the seed reports < 0.5 % fallbacks for [0,0] and [0.6,1] with r1=30, r2=4).
``[0, 1]`` accepts every pair: it is plain random cropping.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    Each round draws the corners of every still-unmatched pair in one vectorised call: the
    same distribution as drawing them one by one, without the per-try cost
    (``benchmarks/crop_sampler.py``).
    Returns ``first (n, 2)``, ``second (n, 2)`` top-left corners, ``iou (n,)`` and
    ``fallback (n,)`` bool. ``height``/``width`` must be >= ``size``.
    """
    if height < size or width < size:
        raise ValueError(f"image {height}x{width} is smaller than the {size}px crop")
    lo, hi = interval
    hy, hx = height - size + 1, width - size + 1
    two_area = 2 * size * size
    first = np.zeros((n, 2), np.int32)
    second = np.zeros((n, 2), np.int32)
    iou = np.zeros(n)
    pending = np.arange(n)  # pairs still without a qualifying crop 2
    for _ in range(r2):
        m = len(pending)
        fy, fx = rng.integers(0, hy, m, dtype=np.int32), rng.integers(0, hx, m, dtype=np.int32)
        sy, sx = rng.integers(0, hy, (m, r1), dtype=np.int32), rng.integers(0, hx, (m, r1), dtype=np.int32)
        inter = np.maximum(size - np.abs(sy - fy[:, None]), 0) * np.maximum(size - np.abs(sx - fx[:, None]), 0)
        # lo <= inter / (2 s^2 - inter) <= hi (eq. 3.1 for equal squares), without dividing
        ok = (inter * (1 + lo) >= two_area * lo) & (inter * (1 + hi) <= two_area * hi)
        hit = ok.any(1)
        q = np.where(hit, ok.argmax(1), r1 - 1)  # first qualifying try, else the last one
        rows = np.arange(m)
        first[pending] = np.stack([fy, fx], 1)
        second[pending] = np.stack([sy[rows, q], sx[rows, q]], 1)
        chosen = inter[rows, q]
        iou[pending] = chosen / (two_area - chosen)
        pending = pending[~hit]
        if not len(pending):
            break
    fallback = np.zeros(n, bool)
    fallback[pending] = True
    return first, second, iou, fallback


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
