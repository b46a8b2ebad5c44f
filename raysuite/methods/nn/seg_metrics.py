"""Segmentation metrics."""

from __future__ import annotations

import torch


def dice_per_slice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice (seed 001 eq. 4.2) per slice and class: 2|Y∩Ŷ| / (|Y| + |Ŷ|).

    ``pred``, ``target``: (N, H, W) integer label maps. Returns (N, num_classes); a class
    absent from the ground truth of a slice is NaN (left out of means, as MONAI's
    ``DiceMetric(ignore_empty=True)``), so empty slices neither help nor hurt.
    """
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1, 1)
    p = pred[:, None] == classes
    t = target[:, None] == classes
    inter = (p & t).sum((2, 3)).double()
    sizes = p.sum((2, 3)).double() + t.sum((2, 3)).double()
    dice = 2 * inter / sizes.clamp(min=1)
    dice[t.sum((2, 3)) == 0] = float("nan")
    return dice


def slice_mean_dice(dice: torch.Tensor) -> float:
    """Seed 001's DSC over a validation set: eq. 4.2 is per image (2-D slice), so each
    slice's Dice is the mean over the classes present in its ground truth, background
    included, and the score is the mean over slices (the authors' evaluation).

    ``dice``: (N, C) from :func:`dice_per_slice` (NaN for a class absent from the slice).
    A slice whose classes are all NaN (none of them in its ground truth) is left out.
    """
    valid = ~torch.isnan(dice)
    counts = valid.sum(1)
    per_slice = torch.where(valid, dice, 0).sum(1)[counts > 0] / counts[counts > 0]
    return float(per_slice.mean()) if len(per_slice) else float("nan")
