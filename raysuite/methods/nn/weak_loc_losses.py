"""Losses of weak localisation on a P x P patch grid (seed 003 §3): the base model's
probabilistic loss (Li et al., eqs. 1-3) and the seed's relaxed loss (eq. 12, built from
the ReLU relaxations of eqs. 9 and 11), plus the threshold fit of the seed's alternating
procedure (§4, "Training Details").

Shared shapes: B images, K classes, P x P patches.
``labels`` (B, K): y^k in {0, 1}; ``annotated`` (B, K): a^k in {0, 1} (class k has a box);
``boxes`` (B, K, P, P): 1 on the patches of b^k (zero where a^k = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

_LOG_TINY = -20.0  # below this log s, log(1 - e^-s) = log s - s/2 to float precision


def _log_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(log(1 + e^x)), finite for every finite x (= x - e^x/2 for x << 0)."""
    small = x < _LOG_TINY
    return torch.where(small, x, torch.log(F.softplus(x.clamp(min=_LOG_TINY))))


def log_any_positive(logits: torch.Tensor) -> torch.Tensor:
    """log p(y = 1 | x) of eq. 2, log(1 - prod_j (1 - p_j)), over the last two dims.

    ``logits``: (..., P, P) pre-sigmoid patch scores -> (...). With s = sum_j softplus(x_j)
    = -log prod_j (1 - p_j), the result is log(1 - e^{-s}); s is carried in log space
    (logsumexp of log softplus), so that neither the product over P^2 patches nor a sum of
    underflowing softplus terms loses it: all-negative logits give log s rather than -inf.

    Three regimes of l = log s, each evaluated on an input sanitised to its own range (the
    double-where pattern: the gradient of an unselected ``torch.where`` branch is multiplied
    by 0, and 0 * inf = NaN, so no branch may see a value where it or its derivative is
    infinite): l < -20, log s - s/2 (series); s < log 2, log(-expm1(-s)); otherwise
    log1p(-e^{-s}). E.g. log1p(-e^{-s}) at s = 1e-8 is log 0 in float32.
    """
    log_s = torch.logsumexp(_log_softplus(logits).flatten(-2), dim=-1)
    tiny = log_s < _LOG_TINY
    small = ~tiny & (log_s < math.log(math.log(2)))
    large = ~tiny & ~small
    series = log_s.clamp(max=_LOG_TINY)
    s_small = torch.exp(torch.where(small, log_s, torch.full_like(log_s, _LOG_TINY)))
    # e^{-s} is 0 in float32 long before log s = 80: the clamp only cuts off a zero gradient
    s_large = torch.exp(torch.where(large, log_s, torch.zeros_like(log_s)).clamp(max=80.0))
    return torch.where(
        tiny,
        series - torch.exp(series) / 2,
        torch.where(small, torch.log(-torch.expm1(-s_small)), torch.log1p(-torch.exp(-s_large))),
    )


def li_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    annotated: torch.Tensor,
    boxes: torch.Tensor,
    lambda_ann: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The base model's loss (seed 003 eqs. 1-3, Li et al.), computed in log space.

    ``logits``: (B, K, P, P). Annotated class: L_ann = -sum_{j in b} log p_j
    - sum_{j not in b} log(1 - p_j) (eq. 1, as logsigmoid terms, so the product over P^2
    patches never underflows). Unannotated class: L_un = -y log p(y=1|x)
    - (1 - y) log(1 - p(y=1|x)) with p(y=1|x) from eq. 2 (:func:`log_any_positive`;
    log(1 - p(y=1|x)) = -sum_j softplus(x_j)). Per image L = sum_k (lambda_ann a^k L_ann^k
    + (1 - a^k) L_un^k) (eq. 3); returns the batch mean and the mean annotated/unannotated parts.
    Li et al.'s rescaling heuristics are not applied: the log-space form does not need them.
    """
    ann_term = -(boxes * F.logsigmoid(logits) + (1 - boxes) * F.logsigmoid(-logits)).sum((-2, -1))
    log_none = -F.softplus(logits).sum((-2, -1))
    un_term = -(labels * log_any_positive(logits) + (1 - labels) * log_none)
    ann = (annotated * ann_term).sum(1)
    un = ((1 - annotated) * un_term).sum(1)
    loss = (lambda_ann * ann + un).mean()
    return loss, {"loss_ann": ann.mean().detach(), "loss_un": un.mean().detach()}


@dataclass(frozen=True)
class ThresholdSet:
    """Per-class thresholds of eq. 12, each (K,): ``tau``, ``rho`` fractions of |b| and
    |b̄| (annotated), ``tau_hat``, ``rho_hat`` patch counts (unannotated)."""

    tau: torch.Tensor
    rho: torch.Tensor
    tau_hat: torch.Tensor
    rho_hat: torch.Tensor


def relaxed_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    annotated: torch.Tensor,
    boxes: torch.Tensor,
    thresholds: ThresholdSet,
    lambda_ann: float,
    gamma: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The seed's loss, eq. 12 with the normalisation of eq. 9.

    ``z``: (B, K, P, P) patch scores in [0, 1] (the CRF output, or the unary p when there is
    no CRF); ``gamma``: (K,) weight of negatives (eq. 11: positive-to-negative ratio).

    Annotated class (eq. 9): |b|^-1 ReLU(tau |b| - sum_{j in b} z_j)
    + |b̄|^-1 ReLU(sum_{j not in b} z_j - rho |b̄|). Eq. 12 prints |b|^-1 and rho |b| in the
    second term; we follow eq. 9, because eq. 4 and the text after eq. 5 define rho as the
    share of the complement b̄ that may fire, and only the |b̄| scaling keeps the two terms
    in [0, 1] and balanced, which the text gives as the reason for the scaling. A box that
    covers the whole grid has no second term.
    Unannotated class (eq. 11): y ReLU(tau_hat - sum_j z_j) + gamma (1 - y) ReLU(sum_j z_j - rho_hat).
    Per image: sum_k lambda_ann a^k L_ann^k + (1 - a^k) L_un^k; returns the batch mean and
    the mean annotated / unannotated parts.
    """
    inside = (z * boxes).sum((-2, -1))
    total = z.sum((-2, -1))
    outside = total - inside
    n_in = boxes.sum((-2, -1))
    n_out = boxes[0, 0].numel() - n_in
    t = thresholds
    ann_term = F.relu(t.tau * n_in - inside) / n_in.clamp(min=1) + torch.where(
        n_out > 0, F.relu(outside - t.rho * n_out) / n_out.clamp(min=1), torch.zeros_like(outside)
    )
    un_term = labels * F.relu(t.tau_hat - total) + gamma * (1 - labels) * F.relu(total - t.rho_hat)
    ann = (annotated * ann_term).sum(1)
    un = ((1 - annotated) * un_term).sum(1)
    loss = (lambda_ann * ann + un).mean()
    return loss, {"loss_ann": ann.mean().detach(), "loss_un": un.mean().detach()}


def class_balance(labels: np.ndarray) -> np.ndarray:
    """Eq. 11's gamma per class from the training labels ``labels`` (N, K) in {0, 1} -> (K,).

    gamma^k is "the ratio of positive to negative examples in the data" (eq. 11), here
    max(n_pos, 1) / n_neg: a class with no training positive is weighted as if it had one.
    The literal ratio 0 would switch off that class's whole loss (no positive means no box
    either, so its only terms are the negatives' gamma-weighted ones), leaving its outputs
    untrained; the floor keeps the weakest weight any class can have, and it is continuous
    with n_pos = 1. A class with no negative has no term gamma multiplies: 1.
    """
    labels = np.asarray(labels, np.float64)
    pos = labels.sum(0)
    neg = labels.shape[0] - pos
    return np.where(neg > 0, np.maximum(pos, 1.0) / np.maximum(neg, 1.0), 1.0)


def fit_threshold(
    above: np.ndarray, below: np.ndarray, margin: float, weight_below: float, lo: float, hi: float
) -> float | None:
    """The lower threshold t minimising the eq. 12 hinge terms with the network frozen,
    under the ordering constraint upper = t + ``margin``:

        F(t) = sum_i ReLU(t + margin - above_i) + weight_below * sum_j ReLU(below_j - t),

    ``above`` (values that must reach the upper threshold: a box's covered share, a positive
    image's patch count), ``below`` (values that must stay under t: the complement's share, a
    negative image's count), t in [lo, hi]. Without the constraint the minimum is the
    degenerate solution the seed reports (upper -> 0, lower -> max); with it, F is convex and
    piecewise linear, minimal on an interval of breakpoints whose midpoint is returned.
    None when either side is empty (nothing to balance: keep the current thresholds).
    """
    a, b = np.sort(np.asarray(above, np.float64)), np.sort(np.asarray(below, np.float64))
    if a.size == 0 or b.size == 0:
        return None
    cand = np.unique(np.clip(np.concatenate([a - margin, b, [lo, hi]]), lo, hi))
    a_cum, b_cum = np.concatenate([[0.0], np.cumsum(a)]), np.concatenate([[0.0], np.cumsum(b)])
    n_a = np.searchsorted(a, cand + margin, side="left")  # above_i < t + margin
    cost_a = n_a * (cand + margin) - a_cum[n_a]
    n_b = np.searchsorted(b, cand, side="right")  # below_j > t
    cost_b = (b_cum[-1] - b_cum[n_b]) - (b.size - n_b) * cand
    cost = cost_a + weight_below * cost_b
    best = cand[cost <= cost.min() + 1e-9 * max(1.0, abs(cost.min()))]
    return float((best.min() + best.max()) / 2)


@dataclass
class FitStatistics:
    """What the threshold fit needs from one pass of the frozen network over the training
    images: per annotated (image, class) the covered shares of b and b̄, per unannotated
    (image, class) the patch count sum_j z_j and the label."""

    ann_class: list[np.ndarray]
    ann_inside: list[np.ndarray]
    ann_outside: list[np.ndarray]
    un_class: list[np.ndarray]
    un_label: list[np.ndarray]
    un_total: list[np.ndarray]

    @classmethod
    def empty(cls) -> FitStatistics:
        return cls([], [], [], [], [], [])

    def add(
        self, z: torch.Tensor, labels: torch.Tensor, annotated: torch.Tensor, boxes: torch.Tensor
    ) -> None:
        """One batch: ``z`` (B, K, P, P) in [0, 1] and the targets of the module docstring."""
        n_in = boxes.sum((-2, -1))
        n_out = boxes[0, 0].numel() - n_in
        inside = (z * boxes).sum((-2, -1))
        total = z.sum((-2, -1))
        cls = torch.arange(z.shape[1], device=z.device).expand_as(total)
        ann, un = annotated > 0, annotated <= 0
        self.ann_class.append(cls[ann].cpu().numpy())
        self.ann_inside.append((inside[ann] / n_in[ann].clamp(min=1)).cpu().numpy())
        self.ann_outside.append(((total - inside)[ann] / n_out[ann].clamp(min=1)).cpu().numpy())
        self.un_class.append(cls[un].cpu().numpy())
        self.un_label.append(labels[un].cpu().numpy() > 0)
        self.un_total.append(total[un].cpu().numpy())

    def fit(
        self,
        current: ThresholdSet,
        gamma: np.ndarray,
        margin: float,
        margin_hat: float,
        patches: int,
    ) -> ThresholdSet:
        """Per class, :func:`fit_threshold` on these statistics: rho in [0, 1 - margin] with
        tau = rho + margin (annotated), rho_hat in [0, P^2 - margin_hat] with tau_hat =
        rho_hat + margin_hat and negatives weighted by ``gamma`` (K,) (unannotated). A class
        without both sides keeps its ``current`` thresholds."""
        cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in vars(self).items()}
        out = {
            k: getattr(current, k).detach().cpu().double().numpy().copy()
            for k in ("tau", "rho", "tau_hat", "rho_hat")
        }
        for k in range(len(out["tau"])):
            mine = cat["ann_class"] == k
            rho = fit_threshold(
                cat["ann_inside"][mine], cat["ann_outside"][mine], margin, 1.0, 0.0, 1.0 - margin
            )
            if rho is not None:
                out["rho"][k], out["tau"][k] = rho, rho + margin
            mine = cat["un_class"] == k
            pos = cat["un_label"][mine].astype(bool)
            total = cat["un_total"][mine]
            rho_hat = fit_threshold(
                total[pos], total[~pos], margin_hat, float(gamma[k]), 0.0, patches - margin_hat
            )
            if rho_hat is not None:
                out["rho_hat"][k], out["tau_hat"][k] = rho_hat, rho_hat + margin_hat
        return ThresholdSet(**{k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()})


class Thresholds(torch.nn.Module):
    """The thresholds of eq. 12 as buffers (K,) of the model, so they are checkpointed with
    the weights and, under DDP, broadcast from rank 0 like any buffer."""

    tau: torch.Tensor  # (K,) buffers, registered by name in __init__
    rho: torch.Tensor
    tau_hat: torch.Tensor
    rho_hat: torch.Tensor

    def __init__(self, values: ThresholdSet):
        super().__init__()
        for name in ("tau", "rho", "tau_hat", "rho_hat"):
            self.register_buffer(name, getattr(values, name).detach().clone().float())

    def get(self) -> ThresholdSet:
        return ThresholdSet(self.tau, self.rho, self.tau_hat, self.rho_hat)

    def set(self, values: ThresholdSet) -> None:
        for name in ("tau", "rho", "tau_hat", "rho_hat"):
            getattr(self, name).copy_(getattr(values, name))
