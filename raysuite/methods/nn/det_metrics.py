"""Object-detection metrics: PASCAL-VOC-style (VOC2010+ all-point) mean average precision.

Boxes are ``(x_min, y_min, x_max, y_max)`` in continuous pixel coordinates; areas are
``(x2 - x1) * (y2 - y1)`` (no VOC ``+1``). VinDr-CXR's Kaggle metric is "mAP at IoU > 0.4",
so a match needs IoU *strictly* greater than the threshold by default (``strict=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _to_numpy(x: Any, dtype: type) -> np.ndarray:
    """``np.asarray`` that also takes (possibly CUDA, grad-tracking) torch tensors."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x, dtype=dtype)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (N, 4) and ``b`` (M, 4) -> (N, M) float64.

    IoU = |A∩B| / (|A| + |B| - |A∩B|) with area ``(x2 - x1) * (y2 - y1)``; a pair whose
    union is empty (two degenerate boxes) has IoU 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ all-point interpolated AP from a P/R curve, both (K,) in rank order.

    The precision envelope p̂(k) = max_{j >= k} p(j) (precision made non-increasing from the
    right) is integrated over recall: AP = Σ_k (r_k - r_{k-1}) p̂(k) with r_0 = 0, summed
    where recall changes. An empty curve has AP 0.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _greedy_match(iou: np.ndarray, threshold: float, strict: bool) -> np.ndarray:
    """TP flags (D,) for detections (rows of ``iou`` (D, G), already in rank order).

    Each detection takes the *unmatched* ground truth with the highest IoU (lowest index on
    ties) and is a TP iff that IoU > ``threshold`` (>= when not ``strict``).
    """
    matched = np.zeros(iou.shape[1], dtype=bool)
    tp = np.zeros(iou.shape[0], dtype=bool)
    for k in range(iou.shape[0]):
        row = np.where(matched, -np.inf, iou[k])
        j = int(np.argmax(row)) if row.size else -1
        if j >= 0 and (row[j] > threshold if strict else row[j] >= threshold):
            matched[j] = True
            tp[k] = True
    return tp


class DetectionEvaluator:
    """Accumulates per-image detections and ground truth; ``compute`` gives VOC-style mAP.

    Matching is per image and class. Detections of a class are ranked by descending score
    over the whole evaluated set; ties keep the order of ``add`` calls (then the order within
    an image's arrays), i.e. a stable sort. Walking that ranking, each detection is matched to
    the unmatched GT box of the same class and image with the highest IoU; it is a TP iff
    that IoU > threshold (``>=`` with ``strict=False``), else a FP, so a second detection on
    an already-matched GT is a FP. (This is the "best unmatched" rule; the VOC devkit instead
    takes the best GT overall and calls the detection a FP if that GT is taken.) There are no
    "difficult" flags. AP per class is :func:`average_precision`; a class with GT but no
    detections has AP 0; a class without GT has no AP (NaN, left out of the mean and of the
    per-class keys). mAP is the mean over classes with GT, NaN if no class has any.

    State is plain per-image lists, so evaluation can run on one rank; ``merge`` appends
    another evaluator's images after this one's.
    """

    def __init__(
        self,
        num_classes: int,
        iou_thresholds: Sequence[float] = (0.4, 0.5),
        strict: bool = True,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.keys = [f"{int(round(100 * t))}" for t in self.iou_thresholds]
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"IoU thresholds give duplicate keys: {self.iou_thresholds}")
        self.strict = bool(strict)
        self.reset()

    def reset(self) -> None:
        """Forget all images."""
        self.pred_boxes: list[np.ndarray] = []
        self.pred_scores: list[np.ndarray] = []
        self.pred_labels: list[np.ndarray] = []
        self.gt_boxes: list[np.ndarray] = []
        self.gt_labels: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.gt_boxes)

    def add(
        self,
        pred_boxes: Any,
        pred_scores: Any,
        pred_labels: Any,
        gt_boxes: Any,
        gt_labels: Any,
    ) -> None:
        """Add one image: predictions (D, 4), (D,), (D,) int; ground truth (G, 4), (G,) int.

        Arrays or torch tensors; labels are class indices in ``[0, num_classes)``.
        """
        pb = _to_numpy(pred_boxes, np.float64).reshape(-1, 4)
        ps = _to_numpy(pred_scores, np.float64).reshape(-1)
        pl = _to_numpy(pred_labels, np.int64).reshape(-1)
        gb = _to_numpy(gt_boxes, np.float64).reshape(-1, 4)
        gl = _to_numpy(gt_labels, np.int64).reshape(-1)
        if not len(pb) == len(ps) == len(pl):
            raise ValueError(f"prediction lengths differ: {len(pb)}, {len(ps)}, {len(pl)}")
        if len(gb) != len(gl):
            raise ValueError(f"ground-truth lengths differ: {len(gb)}, {len(gl)}")
        if np.isnan(ps).any():
            raise ValueError("NaN detection score")
        for name, lab in (("pred_labels", pl), ("gt_labels", gl)):
            if lab.size and (lab.min() < 0 or lab.max() >= self.num_classes):
                raise ValueError(f"{name} outside [0, {self.num_classes}): {np.unique(lab)}")
        self.pred_boxes.append(pb)
        self.pred_scores.append(ps)
        self.pred_labels.append(pl)
        self.gt_boxes.append(gb)
        self.gt_labels.append(gl)

    def merge(self, other: DetectionEvaluator) -> None:
        """Append ``other``'s images (after this evaluator's, which fixes tie order)."""
        if (other.num_classes, other.iou_thresholds, other.strict) != (
            self.num_classes,
            self.iou_thresholds,
            self.strict,
        ):
            raise ValueError("cannot merge evaluators with different settings")
        self.pred_boxes += other.pred_boxes
        self.pred_scores += other.pred_scores
        self.pred_labels += other.pred_labels
        self.gt_boxes += other.gt_boxes
        self.gt_labels += other.gt_labels

    def per_class_ap(self) -> np.ndarray:
        """AP as (T, C) for the T thresholds and C classes; NaN for classes without GT."""
        nt = len(self.iou_thresholds)
        ap = np.full((nt, self.num_classes), np.nan)
        for c in range(self.num_classes):
            num_gt = 0
            scores: list[np.ndarray] = []
            tps: list[list[np.ndarray]] = [[] for _ in range(nt)]
            for pb, ps, pl, gb, gl in zip(
                self.pred_boxes,
                self.pred_scores,
                self.pred_labels,
                self.gt_boxes,
                self.gt_labels,
                strict=True,
            ):
                gm = gl == c
                num_gt += int(gm.sum())
                dm = np.flatnonzero(pl == c)
                if dm.size == 0:
                    continue
                dm = dm[np.argsort(-ps[dm], kind="stable")]
                scores.append(ps[dm])
                iou = box_iou(pb[dm], gb[gm])
                for t, thr in enumerate(self.iou_thresholds):
                    tps[t].append(_greedy_match(iou, thr, self.strict))
            if num_gt == 0:
                continue
            if not scores:
                ap[:, c] = 0.0
                continue
            # concatenation is in image order and each image is already sorted, so a stable
            # global sort breaks ties by (image, index within image)
            order = np.argsort(-np.concatenate(scores), kind="stable")
            for t in range(nt):
                tp = np.concatenate(tps[t])[order]
                ctp = np.cumsum(tp)
                ranks = np.arange(1, len(tp) + 1)
                ap[t, c] = average_precision(ctp / num_gt, ctp / ranks)
        return ap

    def compute(self) -> dict[str, float]:
        """``map{k}`` and ``ap{k}/{class}`` (classes with GT only), k = round(100 * IoU thr)."""
        ap = self.per_class_ap()
        out: dict[str, float] = {}
        for t, key in enumerate(self.keys):
            present = ~np.isnan(ap[t])
            out[f"map{key}"] = float(ap[t, present].mean()) if present.any() else math.nan
            for c in np.flatnonzero(present):
                out[f"ap{key}/{c}"] = float(ap[t, c])
        return out
