"""Shared 2-D image operations: intensity normalisation and resizing an image with its boxes.

Conventions (every function here):

* images are ``(H, W)`` arrays, row-major, any real dtype; outputs are float32;
* boxes are ``(N, 4)`` arrays ``x_min, y_min, x_max, y_max`` in *continuous* pixel
  coordinates: pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``, so the whole image is
  the box ``(0, 0, W, H)``. Under this convention a resize from ``(H, W)`` to ``(h, w)``
  maps ``x -> x * w / W`` and ``y -> y * h / H`` exactly, and :func:`resize` samples
  with the matching half-pixel-centre grid (``align_corners=False`` in torch terms), so a
  box scaled by :func:`scale_boxes` covers the same anatomy in the resized image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int | np.integer) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def minmax(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(H, W)`` float32 scaled linearly so min -> 0 and max -> 1
    (a constant image gives zeros)."""
    image = np.asarray(image, np.float32)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros_like(image)
    return ((image - lo) / (hi - lo)).astype(np.float32)


def equalize_histogram(image: np.ndarray, bins: int = 256) -> np.ndarray:
    """Histogram equalisation to [0, 1]: ``(H, W)`` (any dtype) -> ``(H, W)`` float32.

    The image is quantised to ``bins`` equal-width levels spanning its own [min, max]
    (level ``k = min(floor(bins * (v - min) / (max - min)), bins - 1)``); with ``n_k`` the
    number of pixels at level ``k``, ``cdf(k) = n_0 + ... + n_k``, ``cdf_min`` the cdf of the
    lowest occupied level and ``N`` the number of pixels, a pixel at level ``k`` becomes::

        (cdf(k) - cdf_min) / (N - cdf_min)

    so the darkest pixels map to exactly 0, the brightest to exactly 1, and the output's
    histogram is as flat as the quantisation allows. This is OpenCV's ``equalizeHist``
    formula (for ``bins=256`` on an 8-bit image it equals ``cv2.equalizeHist(img) / 255``
    before that function's final rounding), applied at the image's own bit depth instead of
    after a cast to 8 bits. A constant image (``N == cdf_min``) gives zeros. NaNs are refused.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {image.shape}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    values = image.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image contains NaN or Inf")
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(image.shape, np.float32)
    levels = np.minimum(np.floor((values - lo) / (hi - lo) * bins), bins - 1).astype(np.int64)
    cdf = np.cumsum(np.bincount(levels.ravel(), minlength=bins))
    total = cdf[-1]
    cdf_min = cdf[levels.min()]
    lut = (cdf - cdf_min) / float(total - cdf_min)
    return np.clip(lut[levels], 0.0, 1.0).astype(np.float32)


_FILTERS = ("nearest", "bilinear", "bicubic", "area")


def resize(image: np.ndarray, size: Size, interpolation: str = "bilinear") -> np.ndarray:
    """``(H, W)`` -> ``size`` (an int for a square, or ``(h, w)``) float32, aspect ratio not
    kept (VinDr seed §2.1: "resized to a resolution of 512x512").

    Bilinear on the half-pixel-centre grid (Pillow's ``BILINEAR`` on a 32-bit float image:
    output pixel ``j`` samples input ``(j + 0.5) * W / w - 0.5``); when shrinking, the filter
    support widens with the scale factor, so a 3000 px radiograph is low-passed (no aliasing)
    rather than point-sampled. ``interpolation`` may also be ``nearest`` (masks),
    ``bicubic`` or ``area`` (Pillow's box filter).
    """
    from PIL import Image

    if interpolation not in _FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; known: {sorted(_FILTERS)}")
    image = np.asarray(image, np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {image.shape}")
    h, w = _hw(size)
    if image.shape == (h, w):
        return image.copy()
    resample = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "area": Image.Resampling.BOX,
    }[interpolation]
    out = Image.fromarray(np.ascontiguousarray(image)).resize((w, h), resample)
    return np.asarray(out, np.float32)


def scale_boxes(
    boxes: np.ndarray | Sequence[Sequence[float]], from_hw: tuple[int, int], to_hw: tuple[int, int]
) -> np.ndarray:
    """``(N, 4)`` boxes ``x_min, y_min, x_max, y_max`` in pixels of an ``from_hw = (H, W)``
    image -> the same boxes in pixels of the ``to_hw = (h, w)`` resize: x times ``w / W``,
    y times ``h / H``. Returns float32 ``(N, 4)`` (``(0, 4)`` for no boxes)."""
    arr = np.asarray(boxes, np.float64).reshape(-1, 4)
    (src_h, src_w), (dst_h, dst_w) = _hw(from_hw), _hw(to_hw)
    factors = np.array([dst_w / src_w, dst_h / src_h, dst_w / src_w, dst_h / src_h])
    return (arr * factors).astype(np.float32)


def resize_with_boxes(
    image: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]], size: Size
) -> tuple[np.ndarray, np.ndarray]:
    """Resize an ``(H, W)`` image to ``size`` and its ``(N, 4)`` pixel boxes with it.

    Returns ``(image (h, w) float32, boxes (N, 4) float32)``; see :func:`resize` and
    :func:`scale_boxes` for the (shared) coordinate convention.
    """
    image = np.asarray(image)
    hw = _hw(size)
    return resize(image, hw), scale_boxes(boxes, image.shape[:2], hw)
