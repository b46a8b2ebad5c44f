"""Binary classification metrics of the pneumothorax classifier (seed 004 §5.1): ROC AUC,
confusion counts, precision, recall and F1. Inputs are 1-D arrays (anything ``np.asarray``
takes); labels are in {0, 1}.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _pair(a: np.ndarray, labels: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Flatten ``a`` (as ``dtype``) and ``labels`` (as bool); raise ValueError on a length mismatch."""
    a = np.asarray(a, dtype=dtype).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if a.shape != y.shape:
        raise ValueError(f"{a.size} predictions for {y.size} labels")
    return a, y


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (seed 004 §5.1) as the Mann–Whitney U statistic.

    ``scores``, ``labels``: (N,). AUC = (R₊ − n₊(n₊+1)/2) / (n₊·n₋) with R₊ the sum of the
    positives' ranks, ties given their average rank, so a tied positive–negative pair counts
    1/2 and all-equal scores give 0.5. NaN when only one class is present.
    """
    s, y = _pair(scores, labels, np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u = rankdata(s)[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def binary_counts(pred: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Confusion counts ``tp``, ``fp``, ``fn``, ``tn`` of boolean ``pred`` (N,) against ``labels`` (N,)."""
    p, y = _pair(pred, labels, bool)
    return {
        "tp": int((p & y).sum()),
        "fp": int((p & ~y).sum()),
        "fn": int((~p & y).sum()),
        "tn": int((~p & ~y).sum()),
    }


def precision_recall_f1(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Precision TP/(TP+FP), recall TP/(TP+FN) and F1 = 2PR/(P+R) (seed 004 §5.1).

    ``pred``: boolean (N,); ``labels``: (N,). Conventions for empty denominators: precision
    is 0 when nothing is predicted positive, recall is 0 when there are no positives, and F1
    is 0 when precision + recall = 0.
    """
    c = binary_counts(pred, labels)
    predicted, positives = c["tp"] + c["fp"], c["tp"] + c["fn"]
    precision = c["tp"] / predicted if predicted else 0.0
    recall = c["tp"] / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
