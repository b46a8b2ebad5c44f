"""PAC-CRF on the P x P patch grid (seed 003 §3.3, after Su et al.'s pixel-adaptive
convolution CRF), in plain PyTorch with ``F.unfold``.

Each class k is a binary variable per patch (a patch may hold several diseases, so the
seed's sigmoid, not a softmax). The unary term is the base model's p_j^k; the pairwise term
is psi_jl(k, k') = G(f_j, f_l) W_{k k'}(xi_j - xi_l): a fixed Gaussian kernel on learned
features f times a learned inter-class compatibility that varies with the spatial offset,
over a window Omega (19 x 19 in the seed) around each patch, without the patch itself.
Mean-field steps update the logits as

    x_j^k <- u_j^k + |Omega|^-1 sum_{l in Omega(j), l != j} G(f_j, f_l) sum_{k'} W_{k k'}(xi_l - xi_j) q_l^{k'},
    q = sigmoid(x),

starting from q = sigmoid(u). W starts at zero, so an untrained CRF returns the unary. The
message is averaged over the |Omega| window taps (ours; the seed does not say): summed over
a 19 x 19 window and K classes, one Adam step on every tap of W would move a logit by
hundreds of times the learning rate and wipe out the converged unary in a few steps.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def gaussian_kernel(features: torch.Tensor, size: int) -> torch.Tensor:
    """G(f_j, f_l) = exp(-||f_j - f_l||^2 / 2) over the ``size`` x ``size`` window of every
    patch: ``features`` (B, C, P, P) -> (B, 1, size^2, P^2). Window positions outside the
    grid get 0."""
    b, c, p, q = features.shape
    pad = size // 2
    windows = F.unfold(features, size, padding=pad).view(b, c, size * size, p * q)
    centre = features.view(b, c, 1, p * q)
    inside = F.unfold(torch.ones_like(features[:, :1]), size, padding=pad).view(
        b, 1, size * size, p * q
    )
    return torch.exp(-0.5 * ((windows - centre) ** 2).sum(1, keepdim=True)) * inside


class PacCrf(nn.Module):
    """Mean-field PAC-CRF: (unary logits (B, K, P, P), features (B, C, P, P)) -> logits (B, K, P, P).

    ``compat`` is W: (K, K, size, size), one K x K compatibility per offset; its centre tap
    is masked (no self-pairwise term). ``steps`` mean-field iterations share W.
    """

    mask: torch.Tensor  # (size, size) buffer: 1, the centre tap 0

    def __init__(self, classes: int, size: int = 19, steps: int = 5):
        super().__init__()
        if size % 2 == 0 or size < 3:
            raise ValueError(f"PAC window size must be odd and >= 3, got {size}")
        self.size, self.steps = size, steps
        self.compat = nn.Parameter(torch.zeros(classes, classes, size, size))
        mask = torch.ones(size, size)
        mask[size // 2, size // 2] = 0.0
        self.register_buffer("mask", mask, persistent=False)

    def message(self, q: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """|Omega|^-1 sum_l G_jl sum_k' W_kk'(xi_l - xi_j) q_l^k': q (B, K, P, P), kernel
        (B, 1, S^2, P^2) -> (B, K, P, P)."""
        b, k, p, r = q.shape
        s2 = self.size * self.size
        windows = F.unfold(q, self.size, padding=self.size // 2).view(b, k, s2, p * r) * kernel
        weight = (self.compat * self.mask).view(k, k * s2) / s2
        return torch.einsum("om,bmn->bon", weight, windows.view(b, k * s2, p * r)).view(b, k, p, r)

    def forward(self, unary: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        kernel = gaussian_kernel(features.float(), self.size).to(unary.dtype)
        logits = unary
        for _ in range(self.steps):
            logits = unary + self.message(torch.sigmoid(logits), kernel)
        return logits
