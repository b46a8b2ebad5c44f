"""Losses of the pneumothorax cascade (seed 004 §3.6.1): soft-F1 for the classifier, and the
segmentation losses (Jaccard, Dice, BCE, focal, Tversky, combo) with a weighted sum for sweeps.

Segmentation losses take ``logits`` (B, 2, H, W), a two-class softmax output whose channel 1
is pneumothorax, and ``target`` (B, H, W) with values in {0, 1} (any dtype). The foreground
probability is ``p = softmax(logits)[:, 1]``; log terms use ``log_softmax`` so that large
logits stay finite. Overlap losses (Jaccard, Dice, Tversky, combo's Dice) sum over the whole
batch before taking the ratio; pixel losses (BCE, focal, combo's cross-entropy) average over
every pixel of the batch. Each returns a differentiable scalar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor


def _fg(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Foreground probability ``p`` and float target ``t``, both (B, H, W).

    Raises ValueError unless ``logits`` is (B, 2, H, W) and ``target`` is (B, H, W).
    """
    if logits.ndim != 4 or logits.shape[1] != 2 or target.shape != logits[:, 0].shape:
        raise ValueError(
            f"expected logits (B, 2, H, W) and target (B, H, W), "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    return logits.softmax(1)[:, 1], target.to(logits.dtype)


def soft_f1_loss(logits: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """Soft-F1 loss of the image classifier (seed 004 §3.6.1), Park's ``F1_Loss`` [55]: the
    mean of both classes' soft F1 scores.

    ``logits``: (B,) or (B, 1) one pre-sigmoid score, class probabilities (1 − p, p) with
    p = sigmoid(logits) (the same as a two-logit softmax over (0, logit)); or (B, 2) two
    logits, probabilities their softmax. ``target``: (B,) in {0, 1}. Per class c, with q_c
    the class's probability and y_c its one-hot target, over the batch:
    TP_c = Σ q_c·y_c, FP_c = Σ q_c·(1−y_c), FN_c = Σ (1−q_c)·y_c,
    P_c = TP_c / (TP_c + FP_c + eps), R_c = TP_c / (TP_c + FN_c + eps),
    F1_c = 2·P_c·R_c / (P_c + R_c + eps) clamped to [eps, 1 − eps];
    loss = 1 − (F1_0 + F1_1) / 2. Returns a scalar.
    """
    if logits.ndim == 2 and logits.shape[1] == 2:
        probs = logits.float().softmax(1)
    else:
        p = torch.sigmoid(logits.float().reshape(-1))
        probs = torch.stack([1 - p, p], 1)
    y = target.reshape(-1).to(probs.dtype)
    if probs.shape[0] != y.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}")
    onehot = torch.stack([1 - y, y], 1)
    tp = (probs * onehot).sum(0)
    fp = (probs * (1 - onehot)).sum(0)
    fn = ((1 - probs) * onehot).sum(0)
    precision = tp / (tp + fp + eps)
    recall = tp / (tp + fn + eps)
    f1 = (2 * precision * recall / (precision + recall + eps)).clamp(eps, 1 - eps)
    return 1 - f1.mean()


def jaccard_loss(logits: Tensor, target: Tensor, smooth: float = 0.0, eps: float = 1e-7) -> Tensor:
    """Soft Jaccard (IoU) loss of the U-Net (seed 004 §3.6.1), segmentation_models_pytorch style.

    ``logits`` (B, 2, H, W), ``target`` (B, H, W). With I = Σ p·t and U = Σ p + Σ t − I over
    the whole batch, loss = 1 − (I + smooth) / (U + smooth + eps). With ``smooth=0`` a batch
    with no foreground in truth or prediction scores 1 and gets no gradient from this term.
    """
    p, t = _fg(logits, target)
    inter = (p * t).sum()
    union = p.sum() + t.sum() - inter
    return 1 - (inter + smooth) / (union + smooth + eps)


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 0.0, eps: float = 1e-7) -> Tensor:
    """Soft Dice loss (seed 004 §3.6.1): 1 − (2I + smooth) / (Σ p + Σ t + smooth + eps).

    ``logits`` (B, 2, H, W), ``target`` (B, H, W); I = Σ p·t, all sums over the whole batch.
    """
    p, t = _fg(logits, target)
    inter = (p * t).sum()
    return 1 - (2 * inter + smooth) / (p.sum() + t.sum() + smooth + eps)


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy (seed 004 §3.6.1): −mean(t·log p + (1−t)·log(1−p)).

    ``logits`` (B, 2, H, W), ``target`` (B, H, W); computed as the two-class cross-entropy,
    mean over all B·H·W pixels.
    """
    _fg(logits, target)
    return F.cross_entropy(logits, target.long())


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss of Lin et al. (seed 004 §3.6.1): FL(p_t) = −α_t (1 − p_t)^γ log p_t.

    ``logits`` (B, 2, H, W), ``target`` (B, H, W). p_t = p where t = 1 and 1 − p where t = 0;
    α_t = α for t = 1 and 1 − α for t = 0. Mean over all B·H·W pixels. ``1 − p_t`` is taken
    as the other class's softmax probability, so it does not round to 0 before it must.
    """
    _, t = _fg(logits, target)
    log_probs = logits.log_softmax(1)
    log_pt = t * log_probs[:, 1] + (1 - t) * log_probs[:, 0]
    one_minus_pt = (t * log_probs[:, 0] + (1 - t) * log_probs[:, 1]).exp()
    alpha_t = t * alpha + (1 - t) * (1 - alpha)
    return -(alpha_t * one_minus_pt.pow(gamma) * log_pt).mean()


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 1.0,
    eps: float = 1e-7,
) -> Tensor:
    """(Focal) Tversky loss (seed 004 §3.6.1): (1 − TI)^γ, TI = TP / (TP + α·FP + β·FN + eps).

    ``logits`` (B, 2, H, W), ``target`` (B, H, W). The seed's T = |X∩Y| / (|X∩Y| + α|X−Y| +
    β|Y−X|) with X the prediction and Y the truth, so ``alpha`` weights false positives
    FP = Σ p·(1−t) and ``beta`` weights false negatives FN = Σ (1−p)·t; TP = Σ p·t, all over
    the whole batch. ``gamma=1`` is plain Tversky; α = β = 0.5 is the Dice loss.
    """
    p, t = _fg(logits, target)
    tp = (p * t).sum()
    fp = (p * (1 - t)).sum()
    fn = ((1 - p) * t).sum()
    return (1 - tp / (tp + alpha * fp + beta * fn + eps)).pow(gamma)


def combo_loss(
    logits: Tensor,
    target: Tensor,
    ce_ratio: float = 0.5,
    ce_beta: float = 0.5,
    eps: float = 1e-7,
) -> Tensor:
    """Combo loss of Taghanaki et al. as seed 004 §3.6.1 writes it: r·WCE − (1 − r)·Dice.

    ``logits`` (B, 2, H, W), ``target`` (B, H, W); r = ``ce_ratio``, β = ``ce_beta``.
    WCE = −mean(β·t·log p + (1−β)·(1−t)·log(1−p)) over all pixels and Dice = (2I + eps) /
    (Σ p + Σ t + eps) the soft Dice coefficient over the whole batch. The Dice coefficient is
    subtracted, not 1 − Dice, so the loss can be negative (its minimum is −(1 − r)).
    """
    p, t = _fg(logits, target)
    log_probs = logits.log_softmax(1)
    wce = -(ce_beta * t * log_probs[:, 1] + (1 - ce_beta) * (1 - t) * log_probs[:, 0]).mean()
    dice = (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)
    return ce_ratio * wce - (1 - ce_ratio) * dice


LOSSES: dict[str, Callable[..., Tensor]] = {
    "jaccard": jaccard_loss,
    "dice": dice_loss,
    "bce": bce_loss,
    "focal": focal_loss,
    "tversky": tversky_loss,
    "combo": combo_loss,
}


def weighted_seg_loss(
    logits: Tensor,
    target: Tensor,
    weights: Mapping[str, float],
    params: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of segmentation losses (seed 004 §3.6.1): Σ_k w_k · LOSSES[k](logits, target).

    ``logits`` (B, 2, H, W), ``target`` (B, H, W). ``params[k]`` holds keyword arguments of
    loss ``k``; losses with weight 0 are not computed. Returns ``(total, terms)`` with
    ``terms[k]`` the detached, unweighted scalar value of loss ``k``. Raises ValueError for
    a name (in ``weights`` or ``params``) not in ``LOSSES``, or when every weight is zero.
    """
    params = params or {}
    for name in [*weights, *params]:
        if name not in LOSSES:
            raise ValueError(f"unknown segmentation loss {name!r}; choose from {sorted(LOSSES)}")
    active = {name: w for name, w in weights.items() if w != 0}
    if not active:
        raise ValueError(f"every segmentation loss weight is zero: {dict(weights)}")
    values = {name: LOSSES[name](logits, target, **params.get(name, {})) for name in active}
    total = cast(Tensor, sum(active[name] * value for name, value in values.items()))  # non-empty
    return total, {name: value.detach() for name, value in values.items()}
