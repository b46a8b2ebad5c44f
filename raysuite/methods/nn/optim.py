"""Optimiser helpers shared by methods: no weight decay on norms and biases, warm-up +
cosine learning-rate schedules stepped per iteration."""

from __future__ import annotations

import math
from collections.abc import Iterable

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
