"""SimCLR projection head and NT-Xent loss (seed 000, §3.3; Chen et al. 2020, eq. 1).

Two augmented views of each image go through a shared encoder and :class:`ProjectionHead`;
:func:`nt_xent` pulls the two views of an image together against every other view in the
(optionally all-rank) batch. :func:`nt_xent_accuracy` is the matching top-1 monitor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """SimCLR's non-linear projection head g(h) = W2 ReLU(BN(W1 h)) (Chen et al. 2020, §2.1).

    (B, in_dim) -> (B, out_dim). The loss is computed on its output; the encoder output h
    before it is what gets transferred (seed §3.3: the ResNet-50 body of the detector).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),  # bias is redundant before BN
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _gathering(gather: bool) -> bool:
    return gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = True
) -> torch.Tensor:
    """NT-Xent, eq. 1 of SimCLR, averaged over all 2N anchors (both directions). -> ()

    ``z1``, ``z2``: (N, d) projections of the two views; row i of each is the same image.
    With u the L2-normalised views and s_ij = u_i . u_j / temperature, anchor i with
    positive p(i) (its other view) has loss

        l_i = -log( exp(s_{i,p(i)}) / sum_{k != i} exp(s_ik) )

    the self term k = i is removed from the denominator (logit set to -inf, so it adds
    exp(-inf) = 0; a zeroed logit would still add exp(0) = 1). Computed in at least float32
    with autocast off: at temperature 0.1 logits reach +-10 and bf16 would blur them.

    Distributed (``gather`` and an initialised process group of world size W > 1): the
    views of all ranks are gathered with a differentiable all-gather, so each of this
    rank's 2N anchors is contrasted with all 2NW views (2NW - 2 negatives), and the mean
    over the local anchors is returned. The gather's backward sums the gradients of every
    rank's loss into each rank's own inputs, so after DDP averages parameter gradients
    (/W) the update is the gradient of the mean over all 2NW anchors, i.e. the loss of
    one process holding the whole global batch. Every rank must hold the same N (use
    ``drop_last=True``). ``gather=False`` contrasts within the local batch only.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"expected two (N, d) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 kept
        u1 = F.normalize(z1.to(dtype), dim=1)
        u2 = F.normalize(z2.to(dtype), dim=1)
        anchors = torch.cat([u1, u2])  # (2N, d)
        if _gathering(gather):
            # the differentiable gather that torch.distributed.nn.functional.all_gather's
            # deprecation notice points to; its backward is a sum-reduce-scatter
            from torch.distributed._functional_collectives import all_gather_single

            world, offset = dist.get_world_size(), dist.get_rank() * n
            group = dist.group.WORLD
            assert group is not None  # the default group exists once initialised (_gathering)
            # (WN, d) each, rank-major: rank r's rows at [rN, (r + 1)N)
            keys = torch.cat([all_gather_single(u1, 0, group), all_gather_single(u2, 0, group)])
        else:
            world, offset, keys = 1, 0, anchors
        total = world * n  # views per direction in the contrasted set; keys is (2 total, d)
        local = torch.arange(n, device=z1.device) + offset
        self_idx = torch.cat([local, local + total])  # (2N,) column of each anchor itself
        positive = torch.cat([local + total, local])  # (2N,) column of its other view
        logits = anchors @ keys.T / temperature  # (2N, 2 total)
        rows = torch.arange(2 * n, device=z1.device)
        logits = logits.index_put((rows, self_idx), logits.new_tensor(float("-inf")))
        return F.cross_entropy(logits, positive)


@torch.no_grad()
def nt_xent_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Top-1 contrastive accuracy on the local batch: fraction of the 2N anchors whose most
    cosine-similar other view (self excluded) is their positive. (N, d), (N, d) -> () in
    [0, 1]; chance is 1 / (2N - 1). A monitor only: no gradient, no gather."""
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = u @ u.T
    sim.fill_diagonal_(float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(sim.device)
    return (sim.argmax(dim=1) == positive).float().mean()
