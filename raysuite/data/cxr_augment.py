"""Batched on-device augmentation of seed 004 Table 4.1 (fastai v1 ``get_transforms``).

The thesis trains its U-Net and classifier with fastai v1's default ``get_transforms()``:

=====================  ===========  ==========================================
Transformation         Probability  Magnitude
=====================  ===========  ==========================================
flip (horizontal)      0.5          -
symmetric_warp         0.75         m0..m3 ~ U(-0.2, 0.2)
rotate                 0.75         U(-10, 10) degrees
zoom                   0.75         scale U(1.0, 1.1), random centre
brightness             0.75         b ~ U(0.4, 0.6)
contrast               0.75         log c ~ U(log 0.8, log 1.25)
=====================  ===========  ==========================================

Each transform is drawn per sample with its own probability, as fastai draws it per item.
Geometry follows fastai's flow-field semantics: a sampling grid maps every output pixel's
normalised coordinates (x, y) in [-1, 1]² to the input position it reads. fastai applies the
warp to the identity grid first, then the queued affine matrices ``rotate @ zoom``, then flips
the resampled pixels; here those compose into one 3x3 matrix ``T = R Z W`` per sample and one
grid (flipped along its width for flipped samples), so a batch is resampled by a single
``grid_sample``: bilinear for images, nearest for masks, with reflection padding, on the same
grid so image and mask stay aligned.

``align_corners=False`` (pixel-centre grid): fastai v1 sampled with ``align_corners=True``;
the transforms differ only by a (W - 1)/W rescaling of their reference frame, and the
pixel-centre identity grid samples power-of-two sizes (64, 256) exactly, so untransformed
samples come back unchanged.

Lighting follows fastai's ``TfmLighting`` in logit space, after the geometry: brightness
``x -> sigmoid(logit(x) + logit(b))``, then contrast ``x -> sigmoid(logit(x) * c)``, with
``x`` clamped to [eps, 1 - eps] (eps: the dtype's machine epsilon, ~1.2e-7 for float32 where
fastai uses 1e-7) before the logit.

:func:`cutout` (fastai's ``cutout``) is separate: the thesis adds it to the classifier only,
after ~70 epochs (seed 004 §4.4.1), and it never touches masks.

All random numbers come from the ``torch.Generator`` passed in (CPU) and are then moved to
the images' device, so a batch's augmentation is a function of the images and the generator
state wherever the images live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, overload

import torch
import torch.nn.functional as F

Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and magnitudes of seed 004 Table 4.1 (fastai v1 ``get_transforms``).

    ``warp``: symmetric warp magnitudes ~ U(-warp, warp); ``max_rotate``: degrees ~
    U(-max_rotate, max_rotate); ``zoom``: scale range; ``brightness``: b range;
    ``contrast``: c range (log-uniform). ``cutout_holes`` and ``cutout_length`` (fraction of
    the image side) parametrise :func:`cutout`, which :func:`augment` does not apply.
    """

    p_flip: float = 0.5
    p_warp: float = 0.75
    warp: float = 0.2
    p_rotate: float = 0.75
    max_rotate: float = 10.0
    p_zoom: float = 0.75
    zoom: Range = (1.0, 1.1)
    p_brightness: float = 0.75
    brightness: Range = (0.4, 0.6)
    p_contrast: float = 0.75
    contrast: Range = (0.8, 1.25)
    cutout_holes: tuple[int, int] = (1, 4)
    cutout_length: Range = (0.04, 0.18)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.startswith("p_") and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {getattr(self, f.name)}")
        if not 1.0 <= self.zoom[0] <= self.zoom[1]:
            raise ValueError(f"zoom must satisfy 1 <= lo <= hi, got {self.zoom}")
        if not 0.0 < self.brightness[0] <= self.brightness[1] < 1.0:
            raise ValueError(f"brightness must lie in (0, 1), got {self.brightness}")
        if not 0.0 < self.contrast[0] <= self.contrast[1]:
            raise ValueError(f"contrast must be positive, got {self.contrast}")
        if not 0 <= self.cutout_holes[0] <= self.cutout_holes[1]:
            raise ValueError(f"cutout_holes must satisfy 0 <= lo <= hi, got {self.cutout_holes}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """The default magnitudes with every probability 0: :func:`augment` is the identity."""
        probabilities: dict[str, Any] = {f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")}
        return cls(**probabilities)


def _uniform(
    lo: float, hi: float, size: tuple[int, ...], generator: torch.Generator | None
) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(size, generator=generator, dtype=torch.float64)


def symmetric_warp_matrix(magnitudes: torch.Tensor) -> torch.Tensor:
    """fastai's ``symmetric_warp`` as homographies: (B, 4) magnitudes m0..m3 -> (B, 3, 3).

    The corners [[-1, -1], [-1, 1], [1, -1], [1, 1]] (x, y) of the image move to the targets
    [[-1-m3, -1-m1], [-1-m2, 1+m1], [1+m3, -1-m0], [1+m2, 1+m0]]; the returned matrix maps
    output coordinates to input ones, i.e. each target to its corner (homogeneous, last entry
    1). Its 8 free coefficients solve the 8x8 system of the four correspondences.
    """
    m0, m1, m2, m3 = magnitudes.unbind(-1)
    src = torch.stack(
        [
            torch.stack([-1 - m3, -1 - m1], -1),
            torch.stack([-1 - m2, 1 + m1], -1),
            torch.stack([1 + m3, -1 - m0], -1),
            torch.stack([1 + m2, 1 + m0], -1),
        ],
        dim=1,
    )  # (B, 4, 2) output (target) points
    dst = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=src.dtype)
    dst = dst.expand_as(src)  # (B, 4, 2) input (corner) points
    x, y = src.unbind(-1)
    u, v = dst.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)  # (B, 4, 8)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.stack([rows_u, rows_v], dim=2).flatten(1, 2)  # (B, 8, 8): rows u0, v0, u1, ...
    coeffs = torch.linalg.solve(a, dst.flatten(1))  # (B, 8)
    return torch.cat([coeffs, torch.ones_like(coeffs[:, :1])], -1).view(-1, 3, 3)


def rotation_matrix(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """fastai's ``rotate`` about the image centre: (B,) degrees -> (B, 3, 3).

    [[cos, -sin * H/W], [sin * W/H, cos]] in normalised coordinates (the H/W factors make it a
    rotation in pixel space for non-square images, as fastai's ``_affine_mult`` does). It maps
    output to input coordinates, so positive angles turn the content counter-clockwise on
    screen (y points down), like ``torchvision.transforms.v2.functional.rotate``.
    """
    rad = torch.deg2rad(degrees)
    cos, sin = torch.cos(rad), torch.sin(rad)
    mat = torch.eye(3, dtype=degrees.dtype).repeat(len(degrees), 1, 1)
    mat[:, 0, 0], mat[:, 0, 1] = cos, -sin * (height / width)
    mat[:, 1, 0], mat[:, 1, 1] = sin * (width / height), cos
    return mat


def zoom_matrix(scale: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """fastai's ``rand_zoom``: (B,) scale s >= 1 and (B, 2) centre fractions (col, row) in
    [0, 1] -> (B, 3, 3).

    Output coordinates p read the input at p / s + c with c = (1 - 1/s)(2 * centre - 1), so
    the zoomed window [c - 1/s, c + 1/s] stays inside [-1, 1]² (centre 0 / 1: window at the
    left or top / right or bottom edge).
    """
    inv = 1.0 / scale
    mat = torch.eye(3, dtype=scale.dtype).repeat(len(scale), 1, 1)
    mat[:, 0, 0] = mat[:, 1, 1] = inv
    mat[:, :2, 2] = (1.0 - inv)[:, None] * (2.0 * centre - 1.0)
    return mat


def sampling_grid(
    matrices: torch.Tensor, flip: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Grid for ``F.grid_sample(..., align_corners=False)``: (B, 3, 3), (B,) bool -> (B, H, W, 2).

    Output pixel centres p (normalised, (x, y) order) read the input at the dehomogenised
    ``matrices @ [p, 1]``; flipped samples then reverse the grid along its width (fastai flips
    the resampled pixels, which is the same as reading them through the reversed grid).
    """
    like = {"dtype": matrices.dtype, "device": matrices.device}
    xs = (torch.arange(width, **like) * 2 + 1) / width - 1
    ys = (torch.arange(height, **like) * 2 + 1) / height - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], -1)  # (H, W, 3)
    mapped = torch.einsum("bij,hwj->bhwi", matrices, points)
    grid = mapped[..., :2] / mapped[..., 2:]
    return torch.where(flip[:, None, None, None], grid.flip(2), grid)


def adjust_brightness(images: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fastai's ``brightness``: (B, C, H, W) in [0, 1], (B,) b in (0, 1) -> sigmoid(logit(x) +
    logit(b)); b = 0.5 is the identity (up to the eps clamp)."""
    eps = torch.finfo(images.dtype).eps
    shift = torch.logit(b.to(images), eps)[:, None, None, None]
    return torch.sigmoid(torch.logit(images, eps) + shift)


def adjust_contrast(images: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """fastai's ``contrast``: (B, C, H, W) in [0, 1], (B,) c > 0 -> sigmoid(logit(x) * c);
    c = 1 is the identity (up to the eps clamp)."""
    eps = torch.finfo(images.dtype).eps
    return torch.sigmoid(torch.logit(images, eps) * c.to(images)[:, None, None, None])


@overload
def augment(
    images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def augment(
    images: torch.Tensor, masks: None, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, None]: ...
def augment(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Seed 004 Table 4.1 on a batch: images (B, C, H, W) float in [0, 1], masks (B, H, W)
    (any dtype) or None -> (images in [0, 1], masks of the same dtype and values).

    Per sample, independently, with the probabilities of ``cfg``: horizontal flip, symmetric
    warp, rotation, zoom (composed into one grid, see :func:`sampling_grid`), then
    brightness and contrast. The draws (always the same number per batch, so one transform's
    probability does not shift another's randomness) come from ``generator`` on the CPU.
    """
    b, _, h, w = images.shape
    g = generator

    def chosen(p: float) -> torch.Tensor:
        return torch.rand(b, generator=g) < p

    flip = chosen(cfg.p_flip)
    warp = _uniform(-cfg.warp, cfg.warp, (b, 4), g) * chosen(cfg.p_warp)[:, None]
    degrees = _uniform(-cfg.max_rotate, cfg.max_rotate, (b,), g) * chosen(cfg.p_rotate)
    scale = torch.where(chosen(cfg.p_zoom), _uniform(*cfg.zoom, (b,), g), 1.0)
    centre = _uniform(0.0, 1.0, (b, 2), g)
    do_brightness = chosen(cfg.p_brightness)
    brightness = _uniform(*cfg.brightness, (b,), g)
    do_contrast = chosen(cfg.p_contrast)
    contrast = torch.exp(_uniform(math.log(cfg.contrast[0]), math.log(cfg.contrast[1]), (b,), g))

    device, dtype = images.device, torch.promote_types(images.dtype, torch.float32)
    matrices = (
        rotation_matrix(degrees, h, w) @ zoom_matrix(scale, centre) @ symmetric_warp_matrix(warp)
    )
    grid = sampling_grid(matrices.to(device, dtype), flip.to(device), h, w).to(images.dtype)
    out = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    out = _select(do_brightness, adjust_brightness(out, brightness), out)
    out = _select(do_contrast, adjust_contrast(out, contrast), out)
    if masks is None:
        return out, None
    labels = masks[:, None].to(grid.dtype)
    labels = F.grid_sample(
        labels, grid, mode="nearest", padding_mode="reflection", align_corners=False
    )
    return out, labels[:, 0].to(masks.dtype)


def _select(chosen: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per sample: (B,) bool -> ``new`` where chosen, else ``old`` (B, ...)."""
    return torch.where(chosen.to(old.device).view(-1, *[1] * (old.dim() - 1)), new, old)


def cutout(
    images: torch.Tensor,
    holes: tuple[int, int],
    length: Range,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """fastai's ``cutout`` (seed 004 §4.4.1, classifier only): (B, C, H, W) -> same shape.

    Per image, n ~ U{holes[0], ..., holes[1]} square holes of side round(l * min(H, W))
    pixels, l ~ U(length), centred on uniformly drawn pixels and clipped to the image, are
    set to 0 in every channel; the rest is unchanged. Masks are never cut out.
    """
    b, _, h, w = images.shape
    k = holes[1]
    count = torch.randint(holes[0], holes[1] + 1, (b,), generator=generator)
    side = (_uniform(*length, (b, k), generator) * min(h, w)).round().long()
    cy = torch.randint(h, (b, k), generator=generator)
    cx = torch.randint(w, (b, k), generator=generator)
    top, left = cy - side // 2, cx - side // 2
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top[..., None]) & (rows < (top + side)[..., None])  # (B, k, H)
    in_cols = (cols >= left[..., None]) & (cols < (left + side)[..., None])  # (B, k, W)
    active = torch.arange(k) < count[:, None]  # (B, k)
    hole = (in_rows[..., :, None] & in_cols[..., None, :] & active[..., None, None]).any(1)
    return images.masked_fill(hole[:, None].to(images.device), 0.0)
