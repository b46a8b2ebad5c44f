"""Seed 003's building blocks against hand computation: the relaxed loss (eq. 12), Li et
al.'s loss (eqs. 1-3) and its stability, the threshold fit, BlurPool, the PAC-CRF, and
IoU / IoR localisation accuracy."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from raysuite.methods.nn.loc_metrics import box_raster, localisation_table, overlap
from raysuite.methods.nn.pac_crf import PacCrf, gaussian_kernel
from raysuite.methods.nn.patch_grid import blur_backbone
from raysuite.methods.nn.weak_loc_losses import (
    FitStatistics,
    ThresholdSet,
    class_balance,
    fit_threshold,
    li_loss,
    log_any_positive,
    relaxed_loss,
)


def _thresholds(tau, rho, tau_hat, rho_hat, k=2):
    return ThresholdSet(*(torch.full((k,), float(v)) for v in (tau, rho, tau_hat, rho_hat)))


def test_relaxed_loss_on_a_hand_made_4x4_grid():
    """Two images, two classes; every term worked out by hand."""
    z = torch.zeros(2, 2, 4, 4)
    boxes = torch.zeros(2, 2, 4, 4)
    boxes[0, 0, :2, :2] = 1  # |b| = 4, |b̄| = 12
    z[0, 0, :2, :2] = torch.tensor([[0.9, 0.8], [0.1, 0.2]])  # inside sum 2.0
    z[0, 0, 3, 2:] = 0.5  # outside sum 1.0
    z[0, 1, 2:, 2:] = torch.tensor([[1.0, 0.5], [0.5, 0.5]])  # class 1 sum 2.5
    z[1, 0, 0, :3] = 0.5  # sum 1.5
    z[1, 1, 1, 1] = 0.5  # sum 0.5
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    annotated = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    gamma = torch.tensor([0.2, 0.4])
    loss, terms = relaxed_loss(
        z, labels, annotated, boxes, _thresholds(0.75, 0.05, 3.0, 1.0), 70.0, gamma
    )
    # image 0, class 0 (annotated): ReLU(0.75*4 - 2.0)/4 + ReLU(1.0 - 0.05*12)/12 = 0.25 + 0.4/12
    ann = 0.25 + 0.4 / 12
    # image 0, class 1 (y = 1): ReLU(3 - 2.5) = 0.5
    # image 1, class 0 (y = 0): 0.2 * ReLU(1.5 - 1) = 0.1; class 1 (y = 0): 0.4 * ReLU(0.5 - 1) = 0
    per_image = [70 * ann + 0.5, 0.1]
    assert loss.item() == pytest.approx(np.mean(per_image), rel=1e-6)
    assert terms["loss_ann"].item() == pytest.approx(ann / 2, rel=1e-6)
    assert terms["loss_un"].item() == pytest.approx((0.5 + 0.1) / 2, rel=1e-6)
    # satisfied constraints cost nothing
    easy = _thresholds(0.5, 0.1, 2.0, 2.0)
    assert relaxed_loss(z, labels, annotated, boxes, easy, 70.0, gamma)[0].item() == pytest.approx(
        0.0, abs=1e-7
    )


def _li_by_hand(p, box, label, annotated, lam):
    if annotated:
        return (
            -sum(math.log(pj) if bj else math.log(1 - pj) for pj, bj in zip(p, box, strict=True))
            * lam
        )
    none = math.prod(1 - pj for pj in p)
    return -math.log(1 - none) if label else -math.log(none)


@pytest.mark.parametrize(("label", "annotated"), [(1, 1), (1, 0), (0, 0)])
def test_li_loss_matches_hand_computation(label, annotated):
    logits = torch.tensor([[[[0.3, -1.2], [2.0, -0.4]]]])
    box = [1, 0, 1, 0]
    boxes = torch.tensor(box, dtype=torch.float32).view(1, 1, 2, 2) * annotated
    loss, _ = li_loss(
        logits, torch.tensor([[float(label)]]), torch.tensor([[float(annotated)]]), boxes, 70.0
    )
    p = torch.sigmoid(logits).flatten().tolist()
    assert loss.item() == pytest.approx(_li_by_hand(p, box, label, annotated, 70.0), rel=1e-5)


def test_li_loss_is_finite_where_the_product_form_underflows():
    """20 x 20 grid: the naive 1 - prod(1 - p_j) is 0 (log -> -inf) for confident
    negatives, and prod_j p_j underflows for a confident wrong box; the log-space form stays
    finite, accurate and differentiable."""
    logits = torch.full((1, 1, 20, 20), -40.0, requires_grad=True)
    naive = torch.log(1 - torch.prod(1 - torch.sigmoid(logits)))
    assert torch.isinf(naive)
    loss, _ = li_loss(logits, torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1, 1, 20, 20), 70.0)
    expected = -(math.log(400) - 40.0)  # -log(400 sigmoid(-40)) to first order
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad < 0).all()

    box = torch.zeros(1, 1, 20, 20)
    box[..., :4, :4] = 1
    wrong = torch.full((1, 1, 20, 20), 30.0)
    wrong[..., :4, :4] = -30.0  # fires everywhere but in its box
    assert torch.prod(torch.sigmoid(wrong) * box + (1 - torch.sigmoid(wrong)) * (1 - box)) == 0
    loss, _ = li_loss(wrong, torch.ones(1, 1), torch.ones(1, 1), box, 1.0)
    assert loss.item() == pytest.approx(400 * 30.0, rel=1e-4)
    sure = log_any_positive(torch.full((1, 20, 20), 50.0))
    assert sure.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("x", [-200.0, -60.0, -25.0, -10.0, -1.0, 0.0, 3.0])
def test_log_any_positive_matches_float64_reference(x):
    logits = torch.full((1, 3, 3), x)
    logits[0, 0, 0] = x + 1.0
    s = F.softplus(logits.double()).sum()
    reference = (
        torch.log(-torch.expm1(-s)) if s > 1e-300 else torch.log(torch.exp(logits.double()).sum())
    )
    assert log_any_positive(logits).item() == pytest.approx(reference.item(), rel=1e-5)


@pytest.mark.parametrize(("label", "annotated"), [(1, 0), (0, 0), (1, 1), (0, 1)])
def test_li_loss_and_its_gradient_are_finite_for_logits_over_minus_60_to_60(label, annotated):
    """Every logit in [-60, 60], as a uniform 4 x 4 grid and as one patch among -60s. Before
    the double-where fix, log1p(-e^{-s}) (the branch for s >= log 2, unselected) was -inf
    for uniform grids near -21 and poisoned the gradient with 0 * inf = NaN, also for
    annotated classes, whose unannotated term is masked by a product with 1 - a."""
    x = torch.linspace(-60, 60, 1201)
    uniform = x.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    single = torch.full_like(uniform, -60.0)
    single[:, 0, 0, 0] = x
    logits = torch.cat([uniform, single]).requires_grad_(True)
    n = logits.shape[0]
    boxes = torch.zeros(n, 1, 4, 4)
    boxes[..., :2, :2] = annotated
    loss, _ = li_loss(
        logits, torch.full((n, 1), float(label)), torch.full((n, 1), float(annotated)), boxes, 70.0
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("x", [-21.0, -4.0, 0.5, 3.0])
def test_li_loss_value_and_gradient_on_a_uniform_grid_match_hand_computation(x):
    """Unannotated positive, 4 x 4 logits all x: q = (1 - sigma(x))^16 = e^{-s} with
    s = 16 log(1 + e^x); L = -log(1 - q) (eqs. 2-3), dL/dx_j = -q sigma(x) / (1 - q)."""
    logits = torch.full((1, 1, 4, 4), x, requires_grad=True)
    loss, _ = li_loss(logits, torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1, 1, 4, 4), 70.0)
    loss.backward()
    s = 16 * math.log1p(math.exp(x))
    one_minus_q = -math.expm1(-s)
    sigma = 1 / (1 + math.exp(-x))
    assert loss.item() == pytest.approx(-math.log(one_minus_q), rel=1e-5)
    expected = -math.exp(-s) * sigma / one_minus_q  # -1/16 to first order at x = -21
    assert logits.grad.flatten().tolist() == pytest.approx([expected] * 16, rel=1e-4)


def test_class_balance_is_the_positive_to_negative_ratio_with_a_floor_of_one_positive():
    """Eq. 11: gamma = positives / negatives; a class without training positives gets
    1 / negatives (not 0, which would drop the class's loss), one without negatives 1."""
    labels = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1]])
    assert class_balance(labels).tolist() == pytest.approx([2 / 3, 1 / 5, 1.0])
    assert class_balance(np.zeros((0, 2))).tolist() == [1.0, 1.0]  # no training images
    # the floor keeps the never-positive class's negatives in the loss (eq. 11's second term)
    z = torch.zeros(1, 3, 2, 2)
    z[0, 1] = 1.0  # class 1 fires on all 4 patches of a negative image
    gamma = torch.tensor(class_balance(labels), dtype=torch.float32)
    loss, _ = relaxed_loss(
        z, torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3, 2, 2),
        _thresholds(0.5, 0.1, 2.0, 1.0, k=3), 70.0, gamma,
    )  # fmt: skip
    assert loss.item() == pytest.approx(1 / 5 * (4.0 - 1.0), rel=1e-6)


def _brute_force(above, below, margin, weight, lo, hi):
    ts = np.linspace(lo, hi, 20001)
    cost = [
        np.maximum(t + margin - above, 0).sum() + weight * np.maximum(below - t, 0).sum()
        for t in ts
    ]
    best = ts[np.isclose(cost, min(cost), rtol=0, atol=1e-9)]
    return (best.min() + best.max()) / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_fit_minimises_the_hinge_under_the_margin(seed):
    rng = np.random.default_rng(seed)
    above, below = rng.uniform(0.2, 1.0, 15), rng.uniform(0.0, 0.6, 25)
    got = fit_threshold(above, below, 0.2, 0.7, 0.0, 0.8)
    assert got == pytest.approx(_brute_force(above, below, 0.2, 0.7, 0.0, 0.8), abs=1e-3)
    # separable data: the whole gap is optimal, the midpoint is returned
    assert fit_threshold(
        np.array([0.9, 0.8]), np.array([0.1, 0.2]), 0.2, 1.0, 0.0, 0.8
    ) == pytest.approx(0.4)
    assert fit_threshold(np.array([]), below, 0.2, 1.0, 0.0, 0.8) is None


def test_fit_statistics_fit_per_class_and_keep_what_they_cannot_fit():
    z = torch.zeros(3, 2, 4, 4)
    boxes = torch.zeros(3, 2, 4, 4)
    boxes[0, 0, :2, :2] = 1
    z[0, 0, :2, :2] = 1.0  # covers its box fully, nothing outside
    z[1, 1, 0, :3] = 1.0  # a positive image of class 1 with 3 patches
    z[2, 1, 0, 0] = 0.5  # a negative image of class 1 with 0.5
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    annotated = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    stats = FitStatistics.empty()
    stats.add(z, labels, annotated, boxes)
    current = _thresholds(0.5, 0.02, 2.0, 1.0)
    fitted = stats.fit(current, np.ones(2), margin=0.25, margin_hat=1.0, patches=16)
    # class 0 annotated: shares 1.0 inside, 0.0 outside -> rho in [0, 0.75] all optimal -> 0.375
    assert fitted.rho[0].item() == pytest.approx(0.375) and fitted.tau[0].item() == pytest.approx(
        0.625
    )
    # class 1 has no annotated pair: keeps its tau / rho
    assert fitted.tau[1].item() == pytest.approx(0.5) and fitted.rho[1].item() == pytest.approx(
        0.02
    )
    # class 1 unannotated: positive 3.0, negatives 0.0 and 0.5 -> rho_hat in [0.5, 2.0] -> 1.25
    assert fitted.rho_hat[1].item() == pytest.approx(1.25) and fitted.tau_hat[
        1
    ].item() == pytest.approx(2.25)
    # class 0 unannotated pairs are all negative: nothing to balance, kept
    assert fitted.rho_hat[0].item() == pytest.approx(1.0)


def test_blurpool_filter_sums_to_one_and_is_near_shift_invariant():
    from timm.layers import BlurPool2d

    torch.manual_seed(0)
    for size in (3, 5):
        blur = BlurPool2d(1, filt_size=size, stride=2)
        assert blur.filt.sum().item() == pytest.approx(1.0)
        assert torch.allclose(blur.filt[0, 0], blur.filt[0, 0].T)
    blur = BlurPool2d(1, filt_size=5, stride=2)
    x = torch.rand(1, 1, 64, 64)
    shifted = torch.roll(x, 1, dims=-1)  # a one-pixel shift (odd: not a multiple of the stride)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    plain_change = (shifted[..., ::2, ::2] - x[..., ::2, ::2])[inner].abs().mean()
    blur_change = (blur(shifted) - blur(x))[inner].abs().mean()
    assert blur_change < 0.5 * plain_change
    # an even shift moves the output by exactly one sample away from the border
    out, out2 = blur(x), blur(torch.roll(x, 2, dims=-1))
    assert torch.allclose(out2[..., 3:-3, 4:-3], out[..., 3:-3, 3:-4], atol=1e-6)


def test_blur_backbone_blurs_before_every_stride_two_step(tmp_path):
    from timm.layers import BlurPool2d

    plain = blur_backbone("resnet18", antialias=False, blur_size=3)
    weights = tmp_path / "resnet18.pth"
    torch.save(plain.state_dict(), weights)
    model = blur_backbone("resnet18", antialias=True, blur_size=5, weights=str(weights))
    strided = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)
    ]
    assert strided == ["conv1"]  # the stem conv keeps its stride (Zhang's pool_only)
    blurs = [m for m in model.modules() if isinstance(m, BlurPool2d)]
    assert len(blurs) == 1 + 3 + 3 and all(b.filt_size == 5 and b.stride == 2 for b in blurs)
    # the ImageNet file of the plain network loads: the shortcut conv moved behind its blur
    loaded = model.state_dict()
    assert torch.equal(
        loaded["layer2.0.downsample.1.weight"], plain.state_dict()["layer2.0.downsample.0.weight"]
    )
    assert torch.equal(loaded["layer3.1.conv2.weight"], plain.state_dict()["layer3.1.conv2.weight"])
    x = torch.rand(1, 3, 64, 64)
    assert (
        model.eval().forward_features(x).shape
        == plain.eval().forward_features(x).shape
        == (1, 512, 2, 2)
    )


def test_pac_crf_with_zero_pairwise_weight_returns_the_unary():
    torch.manual_seed(0)
    crf = PacCrf(classes=3, size=5, steps=4)
    unary, features = torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6)
    assert torch.equal(crf(unary, features), unary)


def test_pac_crf_step_matches_a_direct_sum():
    """One mean-field step against explicit loops over patches, offsets and classes."""
    torch.manual_seed(0)
    k, p, size, c = 2, 5, 3, 3
    crf = PacCrf(classes=k, size=size, steps=1)
    with torch.no_grad():
        crf.compat.normal_()
    unary, f = torch.randn(1, k, p, p), torch.randn(1, c, p, p)
    q = torch.sigmoid(unary)
    expected = unary.clone()
    r = size // 2
    for o in range(k):
        for y in range(p):
            for x in range(p):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        yy, xx = y + dy, x + dx
                        if (dy, dx) == (0, 0) or not (0 <= yy < p and 0 <= xx < p):
                            continue
                        g = torch.exp(-0.5 * ((f[0, :, y, x] - f[0, :, yy, xx]) ** 2).sum())
                        for i in range(k):
                            weight = crf.compat[o, i, dy + r, dx + r] / size**2  # window mean
                            expected[0, o, y, x] += g * weight * q[0, i, yy, xx]
    assert torch.allclose(crf(unary, f), expected, atol=1e-5)
    kernel = gaussian_kernel(f, size)
    assert kernel.shape == (1, 1, size * size, p * p) and kernel[0, 0, size * size // 2].eq(1).all()


def test_iou_and_ior_on_hand_cases():
    truth = box_raster(np.array([[0.0, 0.0, 2.0, 2.0]]), grid=4)  # 2 x 2 patches
    assert truth.sum() == 4 * 64
    det = np.zeros((4, 4), bool)
    assert overlap(det, truth) == (0.0, 0.0)
    det[:2, :2] = True
    assert overlap(det, truth) == (1.0, 1.0)
    one = np.zeros((4, 4), bool)
    one[0, 0] = True
    assert overlap(one, truth) == (0.25, 1.0)
    one[3, 3] = True
    assert overlap(one, truth) == pytest.approx((1 / 5, 1 / 2))
    half = box_raster(np.array([[0.0, 0.0, 0.5, 1.0]]), grid=4)  # half a patch
    assert overlap(one[:, :] & (np.arange(16).reshape(4, 4) == 0), half) == (0.5, 0.5)
    # two boxes of one class count as their union
    both = box_raster(np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.5, 1.0]]), grid=4)
    assert both.sum() == pytest.approx(1.5 * 64)


def test_localisation_table_counts_pairs_per_class():
    z = np.zeros((3, 2, 4, 4))
    z[0, 0, :2, :2] = 0.9  # exact
    z[1, 0, 3, 3] = 0.9  # elsewhere: IoU 0, IoR 0
    z[2, 1, 0, 0] = 0.6  # one patch of a 2 x 2 box: IoU 0.25, IoR 1
    box = np.array([[0.0, 0.0, 2.0, 2.0]])
    boxes = [{0: box}, {0: box}, {1: box}]
    table = localisation_table(z, boxes, ["A", "B"], threshold=0.3)
    assert table["A"] == {
        "n": 2.0,
        "acc_iou": 0.5,
        "acc_ior": 0.5,
        "mean_iou": 0.5,
        "mean_ior": 0.5,
    }
    assert table["B"]["acc_iou"] == 0.0 and table["B"]["acc_ior"] == 1.0
    assert localisation_table(z, boxes, ["A", "B"], threshold=0.2)["B"]["acc_iou"] == 1.0
