import math

import pytest
import torch

from raysuite.methods.nn.seg_metrics import dice_per_slice
from raysuite.methods.nn.simsiam import collapse_coefficient, simsiam_loss
from raysuite.train.optim import warmup_cosine


def test_simsiam_loss_by_hand():
    p1 = torch.tensor([[1.0, 0.0]])
    p2 = torch.tensor([[0.0, 2.0]])
    z1 = torch.tensor([[1.0, 1.0]])
    z2 = torch.tensor([[3.0, 0.0]])
    # D(p1, z2) = -cos(0) = -1 ; D(p2, z1) = -cos(45 deg) = -1/sqrt(2)
    expected = 0.5 * -1.0 + 0.5 * -(1 / math.sqrt(2))
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(expected, abs=1e-6)


def test_simsiam_stop_gradient():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    simsiam_loss(p, p, z, z).backward()
    assert p.grad is not None and z.grad is None


def test_collapse_coefficient_constant_output_is_one():
    assert collapse_coefficient(torch.ones(64, 128) * 3.0) == pytest.approx(1.0)


def test_collapse_coefficient_isotropic_is_near_zero():
    torch.manual_seed(0)
    assert collapse_coefficient(torch.randn(4096, 256)) < 0.02


def test_collapse_coefficient_by_hand():
    # two samples, d = 2: normalised rows (1,0) and (0,1); per-channel std = 1/sqrt(2)
    value = collapse_coefficient(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert value == pytest.approx(max(0.0, 1 - math.sqrt(2) * (1 / math.sqrt(2))), abs=1e-6)


def test_dice_by_hand():
    target = torch.tensor([[[0, 1, 1, 2]]])
    pred = torch.tensor([[[0, 1, 2, 2]]])
    dice = dice_per_slice(pred, target, 4)
    assert dice[0, 0].item() == pytest.approx(1.0)  # background: 1 vs 1
    assert dice[0, 1].item() == pytest.approx(2 * 1 / (1 + 2))
    assert dice[0, 2].item() == pytest.approx(2 * 1 / (2 + 1))
    assert math.isnan(dice[0, 3].item())  # class absent from the truth: left out


def test_warmup_cosine_endpoints():
    assert warmup_cosine(0, 100, 10, 1e-3, 5e-5) == pytest.approx(1e-4)
    assert warmup_cosine(9, 100, 10, 1e-3, 5e-5) == pytest.approx(1e-3)
    assert warmup_cosine(100, 100, 10, 1e-3, 5e-5) == pytest.approx(5e-5)
