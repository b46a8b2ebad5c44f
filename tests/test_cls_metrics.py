import math

import numpy as np
import pytest

from raysuite.methods.nn.cls_metrics import binary_counts, precision_recall_f1, roc_auc


def _pairwise_auc(scores: list[float], labels: list[int]) -> float:
    """Fraction of (positive, negative) pairs ranked correctly, ties counting 1/2."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_roc_auc_by_hand():
    # pairs: 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_roc_auc_tie_counts_half():
    scores, labels = [0.2, 0.5, 0.5, 0.9, 0.1], [0, 1, 0, 1, 1]
    expected = _pairwise_auc(scores, labels)  # (1 + 0.5 + 1 + 1 + 0 + 0) / 6
    assert expected == pytest.approx(3.5 / 6)
    assert roc_auc(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_roc_auc_all_equal_and_one_class():
    assert roc_auc(np.full(5, 0.3), np.array([0, 1, 1, 0, 1])) == pytest.approx(0.5)
    assert math.isnan(roc_auc(np.array([0.1, 0.9]), np.array([1, 1])))
    assert math.isnan(roc_auc(np.array([0.1, 0.9]), np.array([0, 0])))


def test_roc_auc_rejects_length_mismatch():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        roc_auc(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))


def test_counts_and_precision_recall_f1_by_hand():
    pred = np.array([1, 1, 1, 0, 0, 1], dtype=bool)
    labels = np.array([1, 0, 0, 1, 0, 1])
    assert binary_counts(pred, labels) == {"tp": 2, "fp": 2, "fn": 1, "tn": 1}
    precision, recall = 2 / 4, 2 / 3
    result = precision_recall_f1(pred, labels)
    assert result["precision"] == pytest.approx(precision)
    assert result["recall"] == pytest.approx(recall)
    assert result["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_precision_recall_f1_zero_conventions():
    none = np.zeros(4, dtype=bool)
    labels = np.array([0, 1, 0, 1])
    # nothing predicted positive: precision 0, recall 0, f1 0
    assert precision_recall_f1(none, labels) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # no positives, some predicted: precision 0/2, recall 0 by convention
    some = np.array([1, 0, 1, 0], dtype=bool)
    assert precision_recall_f1(some, np.zeros(4)) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # no positives and nothing predicted
    assert precision_recall_f1(none, np.zeros(4)) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
