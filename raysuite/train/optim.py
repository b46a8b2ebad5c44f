"""Optimiser helpers shared by methods: no weight decay on norms and biases, warm-up +
cosine learning-rate schedules stepped per iteration, and fastai v1's one-cycle policy
(learning rate and momentum) for seed 004."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


def decay_groups(modules: Iterable[nn.Module], weight_decay: float, **extra: float) -> list[dict]:
    """Two parameter groups: weights with ``weight_decay``; biases and every 1-D parameter
    (BatchNorm, LayerNorm, InstanceNorm scales and shifts) without."""
    decay, no_decay = [], []
    for module in modules:
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, **extra},
        {"params": no_decay, "weight_decay": 0.0, **extra},
    ]


def warmup_cosine(step: int, total: int, warmup: int, base_lr: float, final_lr: float) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup`` steps, then cosine to ``final_lr``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every group except those flagged ``fixed_lr`` (SimSiam's predictor)."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr", False):
            group["lr"] = lr


def annealing_cos(start: float, end: float, pct: float) -> float:
    """fastai v1's ``annealing_cos``: cosine from ``start`` (pct 0) to ``end`` (pct 1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * min(1.0, max(0.0, pct))))


@dataclass(frozen=True)
class OneCycle:
    """fastai v1's ``fit_one_cycle`` (``OneCycleScheduler``, Smith's one-cycle policy; seed
    004 §3.6.3) over one cycle of ``total`` steps.

    The first ``a1 = int(total · pct_start)`` steps anneal the learning rate from
    ``peak / div`` up to ``peak`` and the momentum from ``moms[0]`` down to ``moms[1]``; the
    other steps anneal the learning rate down to ``peak / final_div`` and the momentum back
    up to ``moms[0]``; every phase is a cosine (:func:`annealing_cos`). fastai v1's defaults:
    ``pct_start`` 0.3, ``div`` 25, ``final_div = div · 1e4``, ``moms`` (0.95, 0.85).
    """

    peak: float
    pct_start: float = 0.3
    div: float = 25.0
    final_div: float = 25e4
    moms: tuple[float, float] = (0.95, 0.85)

    def _phase(self, step: int, total: int) -> tuple[bool, float]:
        """(in the warm-up phase, progress through the phase in [0, 1])."""
        warm = max(1, int(total * self.pct_start))
        if step < warm:
            return True, step / warm
        return False, (step - warm) / max(1, total - warm)

    def lr(self, step: int, total: int) -> float:
        warm, pct = self._phase(step, total)
        if warm:
            return annealing_cos(self.peak / self.div, self.peak, pct)
        return annealing_cos(self.peak, self.peak / self.final_div, pct)

    def momentum(self, step: int, total: int) -> float:
        warm, pct = self._phase(step, total)
        high, low = self.moms
        return annealing_cos(high, low, pct) if warm else annealing_cos(low, high, pct)


def cycle_of(step: int, total: int, epochs: Sequence[int]) -> tuple[int, int, int]:
    """Where global ``step`` (of ``total`` training steps) falls among consecutive cycles of
    ``epochs[i]`` epochs each (fastai's successive ``fit_one_cycle`` calls): ``(cycle index,
    step within that cycle, steps of that cycle)``. Steps per epoch are ``total // sum(epochs)``;
    a step past the end belongs to the last cycle."""
    if not epochs or any(e <= 0 for e in epochs):
        raise ValueError(f"cycles need positive epoch counts, got {tuple(epochs)}")
    per_epoch = max(1, total // sum(epochs))
    start = 0
    for index, count in enumerate(epochs):
        length = count * per_epoch
        if step < start + length or index == len(epochs) - 1:
            return index, step - start, length
        start += length
    raise AssertionError("unreachable")


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    """fastai's ``opt.mom``: ``betas[0]`` of an Adam-family group, else its ``momentum``."""
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (momentum, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = momentum
