"""Models Genesis image corruptions, 2-D variant (seed 002, restoration pretraining).

Models Genesis (Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical
Image Analysis", MICCAI 2019; extended in MedIA 2021) pretrains an encoder-decoder by
*restoration*: a clean image is corrupted by a random combination of

1. **non-linear intensity mapping** - every intensity goes through a random monotone
   cubic Bezier curve (or its decreasing counterpart), so the network must learn which
   intensity belongs to which tissue;
2. **local pixel shuffling** - many small windows have their pixels permuted, so the
   network must learn local texture and boundaries;
3. **in-painting / out-painting** (mutually exclusive) - a few inner blocks are replaced
   by uniform noise (in-painting), or everything except a few large windows is replaced
   by uniform noise (out-painting), so the network must learn global geometry;

and the network is trained to reproduce the clean image (the restoration target).  Input and
target are flipped together beforehand as plain augmentation.

Seed 002 (H. Song, "Comparison of self-supervised and ImageNet pretraining for medical image
classification", Politecnico di Torino master's thesis, December 2020, §4.1.1.1) uses these four
pretext tasks ("Non-Linear", "Local-Shuffling", "In-/Out-Painting", "Combine") on **2-D**
images (64x64 LUNA16 patches, 224x224 MURA radiographs); the thesis gives no parameter values,
so the defaults below are those of the official 3-D code, carried over axis by axis.

Published defaults (github.com/MrGiovanni/ModelsGenesis; line numbers as read in
``pytorch/utils.py`` @ 32b7b5e and ``pytorch/config.py`` / ``keras/config.py`` @ 104f487,
identical in the top-level ``config.py``):

=============================  ==========================  =====================================
quantity                       value                       source
=============================  ==========================  =====================================
``flip_rate``                  0.4                         config.py L40
``local_rate``                 0.5                         config.py L39
``nonlinear_rate``             0.9                         config.py L35
``paint_rate``                 0.9                         config.py L36
``inpaint_rate``               0.2 (= 1.0 - 0.8)           config.py L37-38 (outpaint_rate 0.8)
flips per sample               up to 3, each with          utils.py L50-59 ``data_augmentation``
                               ``flip_rate``, axis random
Bezier samples (nTimes)        100000                      utils.py L67 (``bezier_curve``
                                                           default is 1000, L23)
Bezier decreasing branch       probability 0.5             utils.py L68-72
shuffle windows                10000 (3-D, 64x64x32)       utils.py L82
shuffle window side            [1, side // 10] per axis    utils.py L84-86
in-paint blocks                at most 5, each drawn       utils.py L108-109, L122
                               while U < 0.95
in-paint block side            [side // 6, side // 3]      utils.py L110-112
out-paint kept windows         1 always + up to 4 more,    utils.py L129-140, L141-142
                               each while U < 0.95
out-paint kept window side     side - [3*side//7,          utils.py L129-131
                               4*side//7]
block offset margin            3 px from each border       utils.py L113-115, L132-134
paint noise                    uniform [0, 1)              utils.py L119, L128
order in ``generate_pair``     flip -> shuffle ->          utils.py L173-188
                               non-linear -> (in | out)
=============================  ==========================  =====================================

Deviations and values that could not be confirmed:

* **Shuffle window count for 2-D.**  No official 2-D code exists in the repository (third-party
  2-D ports use 500 or 10000 windows with no stated reason).  10000 windows of side
  U{1..6} x U{1..6} x U{1..3} on a 64x64x32 cube touch about 82 % of the voxels (simulated).
  With sides U{1..22} (224 // 10) on a 224x224 image, 700 windows touch about 81 %, 500 about
  71 % and 10000 about 100 %, so the 2-D default is ``shuffle_blocks = 700``, chosen for
  224 px.  Window sides scale with the image, so the touched share is nearly size-independent
  (700 windows: ~87 % at 64x64 with sides U{1..6}, ~81 % at 128x128 and 224x224).  A touched
  pixel can keep its value (a permutation may fix it), as in the original.
* The top-level ``utils.py`` (@ e1a381b) omits ``cnt -= 1`` in ``image_in_painting`` (the block
  count is then bounded only by the 0.95 continuation, ~19 on average); the maintained
  ``pytorch/utils.py`` decrements it (at most 5 blocks), which is what is used here.
* The Bezier curve here is evaluated in the textbook orientation (t = 0 at the first control
  point); the original evaluates it reversed.  Both x and y are monotone in t for control points
  in [0, 1]^2, so after sorting the lookup table is the same.  The decreasing branch pairs the
  sorted x with the reversed sorted y, which is what the original's "sort only x" produces.
* The values in the MICCAI/MedIA papers themselves were not checked against the code; the code
  and config above are the source.

All functions take one 2-D float image ``(H, W)`` with values in [0, 1], draw every random
number from the ``np.random.Generator`` they are given (never the global RNG), never modify their
input, and return new ``float32`` arrays of the same shape with values in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
from scipy.special import comb

# Published constants (see the module docstring for the source lines).
BEZIER_SAMPLES = 100_000
SHUFFLE_BLOCKS_2D = 700
PAINT_MARGIN = 3
MAX_FLIPS = 3


class Window(NamedTuple):
    """An axis-aligned rectangle ``image[row:row+height, col:col+width]``."""

    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)


def _floor(x: float) -> int:
    """floor() robust to products such as ``224 * 0.1 = 22.400000000000002`` or ``7 * 4/7``."""
    return int(math.floor(x + 1e-9))


def _as_image(image: np.ndarray) -> np.ndarray:
    """A float32 copy of a 2-D image; ValueError otherwise."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image (H, W), got shape {arr.shape}")
    return arr.astype(np.float32, copy=True)


def _offset(rng: np.random.Generator, side: int, size: int, margin: int) -> int:
    """Window start in [margin, side - size - margin] (published: margin 3); the margin is
    dropped when the image is too small to honour it."""
    hi = side - size - margin
    lo = margin
    if hi < lo:
        lo, hi = 0, side - size
    return int(rng.integers(lo, hi + 1))


# --------------------------------------------------------------------------- Bezier mapping


def bezier_curve(points: np.ndarray, n: int = BEZIER_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Sample a Bezier curve at ``n`` equally spaced parameters t in [0, 1].

    ``points``: (k, 2) control points (x, y), first at t = 0, last at t = 1.  Returns ``(xs, ys)``,
    each (n,) float64, in parameter order (not sorted).  Bernstein basis
    ``C(k-1, i) t^i (1-t)^(k-1-i)`` (the original, utils.py L16-48, uses the reversed order).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise ValueError(f"points must have shape (k>=2, 2), got {pts.shape}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    degree = len(pts) - 1
    t = np.linspace(0.0, 1.0, n)
    basis = np.stack(
        [comb(degree, i) * t**i * (1.0 - t) ** (degree - i) for i in range(degree + 1)]
    )  # (k, n)
    return pts[:, 0] @ basis, pts[:, 1] @ basis


def bezier_lookup(
    rng: np.random.Generator, n: int = BEZIER_SAMPLES
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Random intensity lookup table of Models Genesis' non-linear transformation.

    Cubic Bezier through (0, 0), two control points uniform in [0, 1)^2, (1, 1)
    (utils.py L64); ``n`` = 100000 samples (utils.py L67).  Returns ``(xs, ys, inverted)``:
    ``xs`` (n,) sorted increasing from 0 to 1; ``ys`` (n,) increasing from 0 to 1, or, with
    probability 0.5 (``inverted``, utils.py L68-72), decreasing from 1 to 0.
    """
    controls = rng.random((2, 2))
    points = np.array([[0.0, 0.0], controls[0], controls[1], [1.0, 1.0]])
    xs, ys = bezier_curve(points, n)
    xs, ys = np.sort(xs), np.sort(ys)
    inverted = bool(rng.random() < 0.5)
    if inverted:
        ys = ys[::-1].copy()
    return xs, ys, inverted


def bezier_mapping(
    image: np.ndarray, rng: np.random.Generator, n: int = BEZIER_SAMPLES
) -> np.ndarray:
    """Non-linear intensity transformation: ``image`` (H, W) in [0, 1] -> (H, W) float32.

    Maps every pixel through :func:`bezier_lookup` with ``np.interp``: monotone, endpoint
    preserving (0 -> 0, 1 -> 1, or 0 -> 1, 1 -> 0 when inverted), values stay in [0, 1].
    """
    img = _as_image(image)
    xs, ys, _ = bezier_lookup(rng, n)
    return np.interp(img, xs, ys).astype(np.float32)


# --------------------------------------------------------------------- local pixel shuffling


def local_pixel_shuffle_windows(
    image: np.ndarray,
    rng: np.random.Generator,
    blocks: int = SHUFFLE_BLOCKS_2D,
    max_fraction: float = 0.1,
) -> tuple[np.ndarray, list[Window]]:
    """Local pixel shuffling, also returning the windows in the order they were written.

    ``blocks`` windows; each side uniform in [1, max(1, floor(side * max_fraction))]
    (published: ``side // 10``, utils.py L84-86), position uniform over the image (utils.py
    L87-89).  Each window is read from the ORIGINAL image, its pixels permuted, and written to
    the output (utils.py L90-101), so overlapping windows overwrite each other and the last
    window written keeps exactly its original multiset.  Returns ``(out, windows)`` with
    ``out`` (H, W) float32.
    """
    orig = _as_image(image)
    out = orig.copy()
    h, w = orig.shape
    max_h = max(1, _floor(h * max_fraction))
    max_w = max(1, _floor(w * max_fraction))
    windows: list[Window] = []
    for _ in range(blocks):
        bh = int(rng.integers(1, max_h + 1))
        bw = int(rng.integers(1, max_w + 1))
        win = Window(int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw)
        sl = win.slices
        out[sl] = rng.permutation(orig[sl].ravel()).reshape(bh, bw)
        windows.append(win)
    return out, windows


def local_pixel_shuffle(
    image: np.ndarray,
    rng: np.random.Generator,
    blocks: int = SHUFFLE_BLOCKS_2D,
    max_fraction: float = 0.1,
) -> np.ndarray:
    """Local pixel shuffling: (H, W) -> (H, W) float32; see :func:`local_pixel_shuffle_windows`."""
    return local_pixel_shuffle_windows(image, rng, blocks, max_fraction)[0]


# ----------------------------------------------------------------- in-painting / out-painting


def in_paint_mask(
    image: np.ndarray,
    rng: np.random.Generator,
    blocks: int = 5,
    min_fraction: float = 1 / 6,
    max_fraction: float = 1 / 3,
    continue_prob: float = 0.95,
    margin: int = PAINT_MARGIN,
) -> tuple[np.ndarray, np.ndarray]:
    """In-painting, also returning the boolean (H, W) mask of the pixels replaced by noise.

    At most ``blocks`` blocks (published 5, utils.py L108); before each one a uniform draw must
    be < ``continue_prob`` (0.95, utils.py L109), so even the first block may be skipped.  Block
    sides uniform in [floor(side * min_fraction), floor(side * max_fraction)] (published
    ``side//6 .. side//3``, utils.py L110-112), offsets at least ``margin`` = 3 px from the
    borders (utils.py L113-115); each block filled with uniform [0, 1) noise (utils.py L119).
    Returns ``(out, mask)``; ``out`` (H, W) float32 equals ``image`` wherever ``mask`` is False.
    """
    out = _as_image(image)
    h, w = out.shape
    mask = np.zeros((h, w), dtype=bool)
    lo_h, hi_h = _side_range(h, min_fraction, max_fraction)
    lo_w, hi_w = _side_range(w, min_fraction, max_fraction)
    for _ in range(blocks):
        if not rng.random() < continue_prob:
            break
        bh = int(rng.integers(lo_h, hi_h + 1))
        bw = int(rng.integers(lo_w, hi_w + 1))
        win = Window(_offset(rng, h, bh, margin), _offset(rng, w, bw, margin), bh, bw)
        out[win.slices] = rng.random((bh, bw), dtype=np.float32)
        mask[win.slices] = True
    return out, mask


def _side_range(side: int, min_fraction: float, max_fraction: float) -> tuple[int, int]:
    lo = min(side, max(1, _floor(side * min_fraction)))
    hi = min(side, max(lo, _floor(side * max_fraction)))
    return lo, hi


def in_paint(
    image: np.ndarray,
    rng: np.random.Generator,
    blocks: int = 5,
    min_fraction: float = 1 / 6,
    max_fraction: float = 1 / 3,
    continue_prob: float = 0.95,
    margin: int = PAINT_MARGIN,
) -> np.ndarray:
    """In-painting: (H, W) -> (H, W) float32; see :func:`in_paint_mask`."""
    return in_paint_mask(image, rng, blocks, min_fraction, max_fraction, continue_prob, margin)[0]


def _kept_side(
    rng: np.random.Generator, side: int, min_fraction: float, max_fraction: float
) -> int:
    """Out-paint window side ``side - r``, r uniform in [floor(side*(1-max)), floor(side*(1-min))].

    For the published 3/7 and 4/7 this is exactly ``side - randint(3*side//7, 4*side//7)``
    (utils.py L129-131).
    """
    r_lo = max(0, _floor(side * (1.0 - max_fraction)))
    r_hi = min(side - 1, max(r_lo, _floor(side * (1.0 - min_fraction))))
    r_lo = min(r_lo, r_hi)
    return side - int(rng.integers(r_lo, r_hi + 1))


def out_paint_windows(
    image: np.ndarray,
    rng: np.random.Generator,
    blocks: int = 5,
    min_fraction: float = 3 / 7,
    max_fraction: float = 4 / 7,
    continue_prob: float = 0.95,
    margin: int = PAINT_MARGIN,
) -> tuple[np.ndarray, list[Window]]:
    """Out-painting, also returning the windows where the original was kept.

    The whole image is replaced by uniform [0, 1) noise (utils.py L128); the original is then
    restored inside one window (always, utils.py L129-140) and inside up to ``blocks - 1`` more,
    each drawn while a uniform draw is < ``continue_prob`` (published 4 more at 0.95, utils.py
    L141-142).  Window sides: see :func:`_kept_side` (about 3/7 .. 4/7 of each side), offsets at
    least ``margin`` = 3 px from the borders.  Returns ``(out, windows)``; ``out`` (H, W) float32
    equals ``image`` exactly on the union of ``windows`` and is noise elsewhere.
    """
    orig = _as_image(image)
    h, w = orig.shape
    out = rng.random((h, w), dtype=np.float32)
    windows: list[Window] = []
    for k in range(blocks):
        if k > 0 and not rng.random() < continue_prob:
            break
        bh = _kept_side(rng, h, min_fraction, max_fraction)
        bw = _kept_side(rng, w, min_fraction, max_fraction)
        win = Window(_offset(rng, h, bh, margin), _offset(rng, w, bw, margin), bh, bw)
        out[win.slices] = orig[win.slices]
        windows.append(win)
    return out, windows


def out_paint(
    image: np.ndarray,
    rng: np.random.Generator,
    blocks: int = 5,
    min_fraction: float = 3 / 7,
    max_fraction: float = 4 / 7,
    continue_prob: float = 0.95,
    margin: int = PAINT_MARGIN,
) -> np.ndarray:
    """Out-painting: (H, W) -> (H, W) float32; see :func:`out_paint_windows`."""
    out, _ = out_paint_windows(
        image, rng, blocks, min_fraction, max_fraction, continue_prob, margin
    )
    return out


# -------------------------------------------------------------------------------------- flip


def flip_pair(
    image: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    rate: float = 0.4,
    max_flips: int = MAX_FLIPS,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip input and target together: (H, W), (H, W) -> (H, W), (H, W) float32 copies.

    As ``data_augmentation`` (utils.py L50-59): while a uniform draw is < ``rate`` and fewer
    than ``max_flips`` (3) flips were done, flip both along an axis chosen uniformly (here
    0 or 1; the same axis may be drawn twice and cancel).
    """
    x, y = _as_image(image), _as_image(target)
    if x.shape != y.shape:
        raise ValueError(f"image and target shapes differ: {x.shape} vs {y.shape}")
    for _ in range(max_flips):
        if not rng.random() < rate:
            break
        axis = int(rng.integers(0, 2))
        x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


# ------------------------------------------------------------------------------- combination


def _check_unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class GenesisTransforms:
    """Models Genesis corruption pipeline for 2-D images, every knob a sweepable field.

    Rates (official ``config.py`` L35-40): ``flip_rate`` 0.4, ``local_rate`` 0.5,
    ``nonlinear_rate`` 0.9, ``paint_rate`` 0.9, ``inpaint_rate`` 0.2 (the out-painting
    probability, given painting, is ``1 - inpaint_rate`` = 0.8).  Sizes (``pytorch/utils.py``):
    ``shuffle_max_fraction`` 0.1 (L84-86), ``inpaint_blocks`` 5 (L108), in-paint sides 1/6..1/3
    (L110-112), ``outpaint_blocks`` 5 = 1 + up to 4 (L129-142), out-paint kept sides
    3/7..4/7 (L129-131), ``paint_continue`` 0.95 (L109, L142), ``paint_margin`` 3 (L113-115),
    ``max_flips`` 3 (L52), ``bezier_samples`` 100000 (L67).  ``shuffle_blocks`` 700 is the 2-D
    choice explained in the module docstring (3-D original: 10000 on 64x64x32 cubes).
    """

    flip_rate: float = 0.4
    local_rate: float = 0.5
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2
    shuffle_blocks: int = SHUFFLE_BLOCKS_2D
    shuffle_max_fraction: float = 0.1
    inpaint_blocks: int = 5
    inpaint_min_fraction: float = 1 / 6
    inpaint_max_fraction: float = 1 / 3
    outpaint_blocks: int = 5
    outpaint_min_fraction: float = 3 / 7
    outpaint_max_fraction: float = 4 / 7
    paint_continue: float = 0.95
    paint_margin: int = PAINT_MARGIN
    max_flips: int = MAX_FLIPS
    bezier_samples: int = BEZIER_SAMPLES

    def __post_init__(self) -> None:
        for name in ("flip_rate", "local_rate", "nonlinear_rate", "paint_rate", "inpaint_rate"):
            _check_unit(name, getattr(self, name))
        _check_unit("paint_continue", self.paint_continue)
        for name in (
            "shuffle_max_fraction",
            "inpaint_min_fraction",
            "inpaint_max_fraction",
            "outpaint_min_fraction",
            "outpaint_max_fraction",
        ):
            _check_fraction(name, getattr(self, name))
        if self.inpaint_min_fraction > self.inpaint_max_fraction:
            raise ValueError(
                f"inpaint_min_fraction ({self.inpaint_min_fraction}) must be <= "
                f"inpaint_max_fraction ({self.inpaint_max_fraction})"
            )
        if self.outpaint_min_fraction > self.outpaint_max_fraction:
            raise ValueError(
                f"outpaint_min_fraction ({self.outpaint_min_fraction}) must be <= "
                f"outpaint_max_fraction ({self.outpaint_max_fraction})"
            )
        _check_count("shuffle_blocks", self.shuffle_blocks, 0)
        _check_count("inpaint_blocks", self.inpaint_blocks, 0)
        _check_count("outpaint_blocks", self.outpaint_blocks, 1)
        _check_count("paint_margin", self.paint_margin, 0)
        _check_count("max_flips", self.max_flips, 0)
        _check_count("bezier_samples", self.bezier_samples, 2)

    def as_dict(self) -> dict[str, float | int]:
        """Field name -> value (for logging as run parameters)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def pair(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(corrupted, target)`` for one clean image (H, W) in [0, 1]; both (H, W) float32.

        Order as ``generate_pair`` (utils.py L173-188): flip both (``flip_rate``); local pixel
        shuffling (``local_rate``); non-linear mapping (``nonlinear_rate``); with ``paint_rate``,
        in-painting (``inpaint_rate``) else out-painting.  ``target`` is the (possibly flipped)
        clean image; the input array is never modified.  Every gate reached costs one uniform
        draw whether or not it fires, so the random stream depends only on the gates' outcomes.
        """
        x, y = flip_pair(image, image, rng, self.flip_rate, self.max_flips)
        if rng.random() < self.local_rate:
            x = local_pixel_shuffle(x, rng, self.shuffle_blocks, self.shuffle_max_fraction)
        if rng.random() < self.nonlinear_rate:
            x = bezier_mapping(x, rng, self.bezier_samples)
        if rng.random() < self.paint_rate:
            if rng.random() < self.inpaint_rate:
                x = in_paint(
                    x,
                    rng,
                    self.inpaint_blocks,
                    self.inpaint_min_fraction,
                    self.inpaint_max_fraction,
                    self.paint_continue,
                    self.paint_margin,
                )
            else:
                x = out_paint(
                    x,
                    rng,
                    self.outpaint_blocks,
                    self.outpaint_min_fraction,
                    self.outpaint_max_fraction,
                    self.paint_continue,
                    self.paint_margin,
                )
        return x, y
