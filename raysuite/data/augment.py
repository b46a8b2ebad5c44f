"""Per-crop 2-D augmentations of seed 001 §4.5, on ``(C, H, W)`` float tensors.

Each takes a ``numpy.random.Generator`` so DataLoader workers draw independent streams.
Spatial ones take an optional label map ``(H, W)`` transformed identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Pair = tuple[torch.Tensor, torch.Tensor | None]


def zoom(x: torch.Tensor, factor: float, label: torch.Tensor | None = None) -> Pair:
    """Zoom by ``factor`` about the centre keeping the size (crop or zero-pad)."""
    h, w = x.shape[-2:]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    out = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    lab = None
    if label is not None:
        lab = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].to(label.dtype)
    return _fit(out, h, w), (_fit(lab[None], h, w)[0] if lab is not None else None)


def _fit(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    ch, cw = x.shape[-2:]
    if ch >= h:
        top = (ch - h) // 2
        x = x[..., top : top + h, :]
    if cw >= w:
        left = (cw - w) // 2
        x = x[..., left : left + w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x


def gaussian_blur(x: torch.Tensor, sigma_y: float, sigma_x: float) -> torch.Tensor:
    """Separable Gaussian blur with per-axis sigma (pixels), truncated at 3 sigma."""
    for axis, sigma in ((-2, sigma_y), (-1, sigma_x)):
        radius = max(1, int(3 * sigma + 0.5))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).view(1, 1, -1, 1) if axis == -2 else (k / k.sum()).view(1, 1, 1, -1)
        pad = (0, 0, radius, radius) if axis == -2 else (radius, radius, 0, 0)
        x = F.conv2d(F.pad(x[:, None], pad, mode="replicate"), k)[:, 0]
    return x


@dataclass(frozen=True)
class AugmentProbs:
    """Probabilities of seed 001 §4.5 (pretraining defaults; fine-tuning in ``FINETUNE``)."""

    zoom: float = 0.75
    flip: float = 0.5
    rotate: float = 0.5
    scale: float = 0.75
    shift: float = 0.0
    blur: float = 0.25
    noise: float = 0.25


PRETRAIN = AugmentProbs()
FINETUNE = AugmentProbs(zoom=0.0, flip=0.25, rotate=0.25, scale=0.15, shift=0.15, blur=0.15, noise=0.15)


def augment(x: torch.Tensor, rng: np.random.Generator, p: AugmentProbs, label: torch.Tensor | None = None) -> Pair:
    """Seed order: zoom [0.8, 1.2], X-axis flip, rot90 by k in {1,2,3}, intensity scale
    x(1+a) with a in [-0.1, 0.1], shift x+b with b in [-0.1, 0.1], blur sigma in [0.25, 1.5]
    per axis, Gaussian noise sigma 0.01."""
    if rng.random() < p.zoom:
        x, label = zoom(x, float(rng.uniform(0.8, 1.2)), label)
    if rng.random() < p.flip:
        x = x.flip(-2)
        label = label.flip(-2) if label is not None else None
    if rng.random() < p.rotate:
        k = int(rng.integers(1, 4))
        x = torch.rot90(x, k, (-2, -1))
        label = torch.rot90(label, k, (-2, -1)) if label is not None else None
    if rng.random() < p.scale:
        x = x * (1 + float(rng.uniform(-0.1, 0.1)))
    if rng.random() < p.shift:
        x = x + float(rng.uniform(-0.1, 0.1))
    if rng.random() < p.blur:
        x = gaussian_blur(x, float(rng.uniform(0.25, 1.5)), float(rng.uniform(0.25, 1.5)))
    if rng.random() < p.noise:
        x = x + 0.01 * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    return x.contiguous(), (label.contiguous() if label is not None else None)
