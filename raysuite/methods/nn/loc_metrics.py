"""Localisation accuracy of seed 003 §4 ("Evaluation Metrics"), after Li et al.

The detected region of class k is the union of the patches with z_j^k >= 0.5; it is
compared with the union of the image's class-k ground-truth boxes. A localisation is
correct when IoU >= T or, for the second accuracy, IoR >= T (T = 0.1 in the seed). IoR is
not defined in the seed; we take Li et al.'s intersection over the detected region
(|D ∩ B| / |D|, as Wang et al.'s IoBB), which is 0 when nothing is detected.
Areas are measured on a raster of ``SUB`` x ``SUB`` cells per patch, so boxes keep their
sub-patch extent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SUB = 8  # raster cells per patch side


def box_raster(boxes: np.ndarray, grid: int, sub: int = SUB) -> np.ndarray:
    """Union of ``boxes`` (N, 4) ``x_min, y_min, x_max, y_max`` in patch units (0..grid)
    as a bool (grid*sub, grid*sub) raster (a cell is in when its centre is)."""
    n = grid * sub
    centres = (np.arange(n) + 0.5) / sub
    out = np.zeros((n, n), bool)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        rows = (centres >= y0) & (centres < y1)
        cols = (centres >= x0) & (centres < x1)
        out |= rows[:, None] & cols[None, :]
    return out


def overlap(detected: np.ndarray, truth: np.ndarray, sub: int = SUB) -> tuple[float, float]:
    """(IoU, IoR) of a bool (P, P) detected patch set against a (P*sub, P*sub) box raster."""
    region = np.repeat(np.repeat(detected, sub, 0), sub, 1)
    inter = float((region & truth).sum())
    area = float(region.sum())
    union = area + float(truth.sum()) - inter
    return (inter / union if union else 0.0), (inter / area if area else 0.0)


def localisation_table(
    z: np.ndarray,
    boxes: Sequence[dict[int, np.ndarray]],
    classes: Sequence[str],
    threshold: float = 0.1,
) -> dict[str, dict[str, float]]:
    """Per class, over the annotated (image, class) pairs: ``n``, ``acc_iou`` and
    ``acc_ior`` (share with IoU >= T, IoR >= T), ``mean_iou``, ``mean_ior``.

    ``z``: (N, K, P, P) patch scores; ``boxes[i]``: class index -> (M, 4) boxes of image i
    in patch units. Classes without any box are absent from the result.
    """
    grid = z.shape[-1]
    scores: dict[int, list[tuple[float, float]]] = {}
    for i, per_class in enumerate(boxes):
        for k, xyxy in per_class.items():
            scores.setdefault(k, []).append(overlap(z[i, k] >= 0.5, box_raster(xyxy, grid)))
    out = {}
    for k in sorted(scores):
        iou, ior = np.asarray(scores[k]).T
        out[classes[k]] = {
            "n": float(len(iou)), "acc_iou": float(np.mean(iou >= threshold)), "acc_ior": float(np.mean(ior >= threshold)),
            "mean_iou": float(iou.mean()), "mean_ior": float(ior.mean()),
        }  # fmt: skip
    return out
