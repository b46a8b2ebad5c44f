import math

import pytest
import torch

from raysuite.methods.nn.seg_losses import (
    LOSSES,
    bce_loss,
    combo_loss,
    dice_loss,
    focal_loss,
    jaccard_loss,
    soft_f1_loss,
    tversky_loss,
    weighted_seg_loss,
)

# hand case, B=2, H=1, W=2: (p, t) per pixel; p = 0.75 / 0.25 from logit ±log(3)
PIXELS = [[(0.75, 1), (0.75, 1)], [(0.75, 0), (0.25, 0)]]
PAIRS = [pair for image in PIXELS for pair in image]
TP = sum(p * t for p, t in PAIRS)  # 1.5
SUM_P, SUM_T = sum(p for p, _ in PAIRS), sum(t for _, t in PAIRS)  # 2.5, 2
FP = sum(p * (1 - t) for p, t in PAIRS)  # 1.0
FN = sum((1 - p) * t for p, t in PAIRS)  # 0.5
BCE = -sum(t * math.log(p) + (1 - t) * math.log(1 - p) for p, t in PAIRS) / len(PAIRS)


def _case(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class logits (channel 0 = 0, channel 1 = log-odds of p) and target of PIXELS."""
    odds = torch.tensor([[[math.log(p / (1 - p)) for p, _ in image]] for image in PIXELS])
    logits = torch.stack([torch.zeros_like(odds), odds], dim=1)
    target = torch.tensor([[[t for _, t in image]] for image in PIXELS], dtype=dtype)
    return logits.requires_grad_(), target


def _random(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 2, 4, 5, generator=gen, dtype=torch.float64)
    return logits, (torch.rand(3, 4, 5, generator=gen) > 0.6).long()


def test_soft_f1_by_hand_averages_both_classes_and_shapes():
    """Park's F1_Loss (seed 004 §3.6.1 [55]): 1 - mean of the two classes' soft F1."""
    logits = torch.tensor([math.log(3), -math.log(3), math.log(3), 0.0])  # p = .75 .25 .75 .5
    labels = torch.tensor([1, 1, 0, 0])
    # class 1: q = p, y = 1 1 0 0
    tp1, fp1, fn1 = 0.75 + 0.25, 0.75 + 0.5, 0.25 + 0.75
    # class 0: q = 1 - p = .25 .75 .25 .5, y = 0 0 1 1
    tp0, fp0, fn0 = 0.25 + 0.5, 0.25 + 0.75, 0.75 + 0.5

    def f1(tp, fp, fn):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        return 2 * precision * recall / (precision + recall)

    expected = 1 - (f1(tp1, fp1, fn1) + f1(tp0, fp0, fn0)) / 2
    assert f1(tp1, fp1, fn1) == pytest.approx(2 / 4.25) and f1(tp0, fp0, fn0) == pytest.approx(0.4)
    assert expected == pytest.approx(1 - (2 / 4.25 + 0.4) / 2)
    assert soft_f1_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert soft_f1_loss(logits[:, None], labels).item() == pytest.approx(expected, abs=1e-6)
    # two logits (a softmax head): softmax((0, z)) is (1 - sigmoid(z), sigmoid(z))
    two = torch.stack([torch.zeros_like(logits), logits], 1)
    assert soft_f1_loss(two, labels).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match=r"logits \(4,\) do not match target \(3,\)"):
        soft_f1_loss(logits, labels[:3])


def test_soft_f1_perfect_is_zero():
    labels = torch.tensor([1, 0, 1, 0, 0])
    logits = torch.where(labels.bool(), 80.0, -80.0)
    assert soft_f1_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_f1_of_a_batch_without_positives_learns_from_the_normal_class():
    """With only the positive class's F1 an all-normal batch scores 1 whatever the model
    says (TP = 0); the normal class's F1 rewards calling them normal."""
    labels = torch.zeros(4, dtype=torch.long)
    logits = torch.tensor([0.0, 0.0, 0.0, 0.0], requires_grad=True)
    loss = soft_f1_loss(logits, labels)
    # class 1: TP 0, F1 clamped to eps; class 0: q = .5, TP 2, FP 0, FN 2: F1 = 2/3
    assert loss.item() == pytest.approx(1 - (1e-7 + 2 / 3) / 2, abs=1e-6)
    loss.backward()
    assert (logits.grad > 0).all()  # lowering the logits (more "normal") lowers the loss


def test_jaccard_by_hand_batch_sum():
    logits, target = _case()
    union = SUM_P + SUM_T - TP
    assert jaccard_loss(logits, target).item() == pytest.approx(1 - TP / union, abs=1e-6)
    smoothed = 1 - (TP + 1) / (union + 1)
    assert jaccard_loss(logits, target, smooth=1.0).item() == pytest.approx(smoothed, abs=1e-6)


def test_jaccard_perfect_is_zero():
    target = torch.tensor([[[1, 0], [0, 1]], [[0, 0], [1, 1]]])
    sign = 2.0 * target - 1
    logits = torch.stack([-80.0 * sign, 80.0 * sign], dim=1)
    assert jaccard_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_by_hand():
    logits, target = _case()
    expected = 1 - 2 * TP / (SUM_P + SUM_T)
    assert dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_bce_by_hand_any_target_dtype():
    for dtype in (torch.float32, torch.long, torch.bool, torch.uint8):
        logits, target = _case(dtype)
        assert bce_loss(logits, target).item() == pytest.approx(BCE, abs=1e-6)


def test_focal_by_hand():
    alpha, gamma = 0.25, 2.0
    expected = 0.0
    for p, t in PAIRS:
        p_t = p if t else 1 - p
        alpha_t = alpha if t else 1 - alpha
        expected -= alpha_t * (1 - p_t) ** gamma * math.log(p_t)
    expected /= len(PAIRS)
    logits, target = _case()
    assert focal_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_focal_gamma0_alpha_half_is_half_bce():
    logits, target = _random()
    focal = focal_loss(logits, target, alpha=0.5, gamma=0.0)
    assert focal.item() == pytest.approx(0.5 * bce_loss(logits, target).item(), rel=1e-9)


def test_tversky_by_hand_alpha_weights_fp():
    logits, target = _case()
    ti = TP / (TP + 0.3 * FP + 0.7 * FN)  # 1.5 / 2.15; swapping α, β would give 1.5 / 2.35
    assert tversky_loss(logits, target).item() == pytest.approx(1 - ti, abs=1e-6)
    focal = tversky_loss(logits, target, gamma=2.0)
    assert focal.item() == pytest.approx((1 - ti) ** 2, abs=1e-6)


def test_tversky_half_half_is_dice():
    logits, target = _random()
    tversky = tversky_loss(logits, target, alpha=0.5, beta=0.5)
    assert tversky.item() == pytest.approx(dice_loss(logits, target).item(), rel=1e-6)


def test_combo_by_hand_can_be_negative():
    ratio, beta = 0.7, 0.6
    wce = -sum(
        beta * t * math.log(p) + (1 - beta) * (1 - t) * math.log(1 - p) for p, t in PAIRS
    ) / len(PAIRS)
    dice = 2 * TP / (SUM_P + SUM_T)
    logits, target = _case()
    value = combo_loss(logits, target, ce_ratio=ratio, ce_beta=beta)
    assert value.item() == pytest.approx(ratio * wce - (1 - ratio) * dice, abs=1e-6)
    assert combo_loss(logits, target, ce_ratio=0.1).item() < 0


def test_weighted_seg_loss_sums_weighted_terms():
    logits, target = _case()
    jaccard = 1 - (TP + 1) / (SUM_P + SUM_T - TP + 1)
    total, terms = weighted_seg_loss(
        logits, target, {"jaccard": 0.5, "bce": 2.0, "focal": 0.0}, {"jaccard": {"smooth": 1.0}}
    )
    assert total.item() == pytest.approx(0.5 * jaccard + 2.0 * BCE, abs=1e-6)
    assert set(terms) == {"jaccard", "bce"}
    assert terms["jaccard"].item() == pytest.approx(jaccard, abs=1e-6)
    assert not terms["bce"].requires_grad
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_weighted_seg_loss_rejects_bad_config():
    logits, target = _case()
    with pytest.raises(ValueError, match="lovasz"):
        weighted_seg_loss(logits, target, {"dice": 1.0, "lovasz": 1.0})
    with pytest.raises(ValueError, match="lovasz"):
        weighted_seg_loss(logits, target, {"dice": 1.0}, {"lovasz": {}})
    with pytest.raises(ValueError, match="zero"):
        weighted_seg_loss(logits, target, {"dice": 0.0, "bce": 0.0})


def test_rejects_wrong_shapes():
    logits, target = _case()
    with pytest.raises(ValueError, match=r"expected logits \(B, 2, H, W\) and target \(B, H, W\), got \(2, 1, 1, 2\)"):
        dice_loss(logits[:, :1], target)
    with pytest.raises(ValueError, match=r"got \(2, 2, 1, 2\) and \(2, 2\)"):
        dice_loss(logits, target[:, 0])


@pytest.mark.parametrize("name", [*LOSSES, "soft_f1"])
def test_large_logits_are_stable(name):
    gen = torch.Generator().manual_seed(1)
    target = (torch.rand(2, 4, 4, generator=gen) > 0.5).long()
    # confident everywhere, right on some pixels and wrong on others
    logits = (80.0 * torch.randn(2, 2, 4, 4, generator=gen).sign()).requires_grad_()
    if name == "soft_f1":
        loss = soft_f1_loss(logits[:, 1, 0, 0], target[:, 0, 0])
    else:
        loss = LOSSES[name](logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
