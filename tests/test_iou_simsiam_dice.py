"""Seed 001's validation DSC (eq. 4.2) on tiny label maps, every value worked out by hand."""

import math

import pytest
import torch

from raysuite.methods.iou_simsiam_seg import score_dice
from raysuite.methods.nn.seg_metrics import dice_per_slice, slice_mean_dice

# Two 2x3 slices, classes 0 (background), 1, 2.
# Slice A: class 1 truth {(0,2),(1,1),(1,2)}, prediction {(0,1),(0,2),(1,2)}.
#   background: truth 3 px, prediction 3 px, 2 shared -> 4/6; class 1: 4/6; class 2 absent.
TRUTH_A = [[0, 0, 1], [0, 1, 1]]
PRED_A = [[0, 1, 1], [0, 0, 1]]
# Slice B: background truth 3 px, prediction 4 px, 3 shared -> 6/7; class 1: 1 px each,
#   shared -> 1; class 2: truth 2 px, prediction 1 px, 1 shared -> 2/3.
TRUTH_B = [[0, 1, 0], [2, 2, 0]]
PRED_B = [[0, 1, 0], [2, 0, 0]]


def _dice(pred: list, truth: list) -> torch.Tensor:
    return dice_per_slice(torch.tensor([pred]), torch.tensor([truth]), 3)


def test_per_slice_dice_by_hand():
    a, b = _dice(PRED_A, TRUTH_A)[0], _dice(PRED_B, TRUTH_B)[0]
    assert a[:2].tolist() == pytest.approx([2 / 3, 2 / 3]) and math.isnan(a[2])
    assert b.tolist() == pytest.approx([6 / 7, 1, 2 / 3])


def test_seed_dice_is_the_mean_over_slices_with_background():
    both = torch.cat([_dice(PRED_A, TRUTH_A), _dice(PRED_B, TRUTH_B)])
    # slice A: (2/3 + 2/3) / 2 = 2/3; slice B: (6/7 + 1 + 2/3) / 3 = 53/63; mean 95/126
    assert slice_mean_dice(both) == pytest.approx(95 / 126)


def test_score_keys_on_two_cases():
    # one slice per validation case; the slice mean runs over the slices of every case
    metrics = score_dice([_dice(PRED_A, TRUTH_A), _dice(PRED_B, TRUTH_B)])
    assert metrics["val/dice"] == pytest.approx(95 / 126)
    # organs only, every (slice, organ) present: (2/3 + 1 + 2/3) / 3 = 7/9
    assert metrics["val/dice_organs"] == pytest.approx(7 / 9)
    # the same with background: (2/3 + 2/3 + 6/7 + 1 + 2/3) / 5 = 27/35
    assert metrics["val/dice_bg"] == pytest.approx(27 / 35)


def test_slice_with_no_scored_class_is_left_out():
    nan = float("nan")
    assert slice_mean_dice(torch.tensor([[0.5, 1.0], [nan, nan]], dtype=torch.float64)) == pytest.approx(0.75)
    assert math.isnan(slice_mean_dice(torch.full((2, 3), nan, dtype=torch.float64)))
