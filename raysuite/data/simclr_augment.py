"""SimCLR view augmentations for grayscale radiographs (seed 000, §3.3).

The seed's list, applied in its order to a ``(C, H, W)`` (or ``(B, C, H, W)``) float image
in [0, 1], each call drawing one view ``(C, S, S)``:

1. random resized crop, area fraction in [0.2, 1] (aspect ratio in [3/4, 4/3], torchvision's
   ``RandomResizedCrop`` default, as in SimCLR), resized to ``S x S`` (bilinear, antialiased);
2. horizontal flip with probability 0.5;
3. Gaussian blur, sigma uniform in [0.1, 2.0] pixels of the ``S x S`` view, kernel 21;
4. additive Gaussian noise, sigma uniform in [12.5 %, 25 %] of the view's mean pixel value.

Histogram normalisation (seed §3.3, "each training and validation image has histogram
normalization applied") is *not* done here: the data layer equalises every image
(:func:`raysuite.data.intensity.equalize_histogram`) before it reaches the augmentation.

Randomness comes only from the ``torch.Generator`` passed in, so a view is a function of
the image and the generator state (DataLoader workers seed their own generators).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF

Range = tuple[float, float]


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _randint(n: int, generator: torch.Generator) -> int:
    """Uniform integer in [0, n)."""
    return int(torch.randint(n, (), generator=generator))


def sample_crop(
    h: int, w: int, scale: Range, ratio: Range, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """Crop box ``(top, left, height, width)`` of an ``h x w`` image: torchvision's
    ``RandomResizedCrop.get_params`` (10 tries of area fraction ~ U(scale) and log aspect
    ratio ~ U(log ratio), then a central fallback) drawing from ``generator``.

    One change: a try is also rejected when rounding the side lengths pushes the area
    fraction out of ``scale``, so every returned box has ``height * width / (h * w)`` in
    ``scale``, except the fallback crop of an image whose own aspect ratio lies outside
    ``ratio`` (the largest centred box of the nearest allowed ratio; never a chest film).
    """
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h and scale[0] <= cw * ch / area <= scale[1]:
            return _randint(h - ch + 1, generator), _randint(w - cw + 1, generator), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        cw, ch = round(h * max(ratio)), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def sample_sigma(blur_sigma: Range, generator: torch.Generator) -> float:
    """Blur sigma (pixels) ~ U(blur_sigma), seed §3.3: U(0.1, 2.0)."""
    return _uniform(blur_sigma[0], blur_sigma[1], generator)


@dataclass(frozen=True)
class SimCLRAugment:
    """One SimCLR view per call (seed §3.3); call twice for the positive pair.

    ``__call__(image, generator)``: ``(C, H, W)`` -> ``(C, S, S)``, or ``(B, C, H, W)`` ->
    ``(B, C, S, S)`` with independent draws per image; float in, same dtype out.

    Parameters (defaults are the seed's): ``size`` S; crop area fraction ``scale`` and
    aspect ``ratio``; ``flip_p``; blur ``blur_sigma`` range, ``blur_kernel`` (odd; capped at
    2S - 1 for tiny views) and ``blur_p``; ``noise_frac``, the range of the noise sigma as
    a fraction of the view's mean; ``clip`` the result to [0, 1].

    ``blur_p = 1.0``: the seed gives a probability only where one applies ("a random
    horizontal flip (with a 50% chance)") and describes blur and noise alike, as random in
    strength ("a random Gaussian blur with sigma between 0.1 and 2", "a random amount of
    Gaussian noise"), so both are always applied with a random sigma; sigma near 0.1 is
    already nearly the identity. SimCLR's ImageNet recipe (Chen et al. 2020, App. A) blurs
    with p = 0.5; set ``blur_p=0.5`` for that.

    ``clip = True``: the noise can push pixels past 0 or 1 (an equalised image has many
    pixels at both ends); clipping keeps views in the [0, 1] range every other image in the
    pipeline has, including the un-noised fine-tuning inputs. Crop, flip and blur are convex
    combinations of pixels and never leave [0, 1] themselves.
    """

    size: int = 224
    scale: Range = (0.2, 1.0)
    ratio: Range = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    blur_sigma: Range = (0.1, 2.0)
    blur_kernel: int = 21
    blur_p: float = 1.0
    noise_frac: Range = (0.125, 0.25)
    clip: bool = True

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd integer, got {self.blur_kernel}")
        for name in ("flip_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("scale", "ratio", "blur_sigma", "noise_frac"):
            lo, hi = getattr(self, name)
            if not (0.0 <= lo <= hi and (lo > 0.0 or name == "noise_frac")):
                raise ValueError(
                    f"{name} must be an ordered range of positive numbers, got {(lo, hi)}"
                )
        if self.scale[1] > 1.0:
            raise ValueError(f"scale is an area fraction in (0, 1], got {self.scale}")

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not image.is_floating_point():
            raise TypeError(f"expected a float image in [0, 1], got {image.dtype}")
        if image.dim() == 4:
            return torch.stack([self._view(x, generator) for x in image])
        if image.dim() != 3:
            raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
        return self._view(image, generator)

    def pair(
        self, image: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent views of ``image``: the SimCLR positive pair."""
        return self(image, generator), self(image, generator)

    def _view(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(C, H, W)`` -> ``(C, S, S)``, steps 1-4 of the module docstring."""
        x = image.float()
        h, w = x.shape[-2:]
        top, left, ch, cw = sample_crop(h, w, self.scale, self.ratio, generator)
        x = TF.resized_crop(x, top, left, ch, cw, [self.size, self.size], antialias=True)
        if float(torch.rand((), generator=generator)) < self.flip_p:
            x = TF.hflip(x)
        if float(torch.rand((), generator=generator)) < self.blur_p:
            sigma = sample_sigma(self.blur_sigma, generator)
            k = min(self.blur_kernel, 2 * self.size - 1)  # reflect padding needs k // 2 < S
            x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
        frac = _uniform(self.noise_frac[0], self.noise_frac[1], generator)
        noise = torch.randn(x.shape, generator=generator, device=generator.device)
        x = x + frac * x.mean() * noise.to(x.device)
        if self.clip:
            x = x.clamp(0.0, 1.0)
        return x.to(image.dtype)
