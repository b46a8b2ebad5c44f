"""SimSiam heads, loss and collapse coefficient (seed 001, §4.1 and eqs. 4.1, 4.3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionMLP(nn.Module):
    """3-layer projector (seed §4.1): Linear+BN+ReLU, Linear+BN+ReLU, Linear+BN(no affine).

    (B, in_dim) -> (B, dim)
    """

    def __init__(self, in_dim: int, dim: int = 2048):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PredictionMLP(nn.Module):
    """2-layer predictor (seed §4.1): dim -> bottleneck (BN+ReLU) -> dim. (B, dim) -> (B, dim)"""

    def __init__(self, dim: int = 2048, bottleneck: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, bottleneck, bias=False),
            nn.BatchNorm1d(bottleneck),
            nn.ReLU(inplace=True),
            nn.Linear(bottleneck, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, sg(z)): mean negative cosine similarity over the batch; z is detached. (B, d) -> ()"""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric SimSiam loss, eq. 4.1: ½D(p1, sg(z2)) + ½D(p2, sg(z1)). Range [-1, 1]."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


@torch.no_grad()
def collapse_coefficient(p: torch.Tensor) -> float:
    """Eq. 4.3: max(0, 1 - sqrt(d) * s), s = mean per-channel std of l2-normalised outputs.

    ``p``: (B, d) predictor outputs. 1 for a constant output (full collapse), about 0 for
    outputs spread isotropically on the unit sphere (std per channel = 1/sqrt(d)).
    """
    normed = F.normalize(p.float(), dim=1)
    std = normed.std(dim=0, unbiased=True).mean().item()
    return max(0.0, 1.0 - math.sqrt(p.shape[1]) * std)
