"""The SIIM-ACR run-length encoding of binary masks (Kaggle ``mask_functions.py``).

The mask is flattened in column-major order (``mask.T.ravel()``: down the first column,
then the second...). The encoding is space-separated ``start length`` pairs where each
``start`` is *relative*: the number of background pixels since the end of the previous
run (the first one counts from pixel 0). ``"-1"`` is the empty mask. Runs may cross a
column boundary. For the 4x4 mask::

    0 0 1 0
    1 0 0 0        column-major flat: 0111 0011 1000 0011
    1 1 0 1        runs (absolute start, length): (1, 3) (6, 3) (14, 2)
    1 1 0 1        encoding: "1 3 2 3 5 2"

The Kaggle ``mask2rle`` drops a run that reaches the last pixel; :func:`encode` keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

EMPTY = "-1"
_DIGITS = re.compile(r"\d+")
_MAX_TOKEN = 2**40  # far beyond any image, small enough for int64 sums


class RLEError(ValueError):
    """A malformed encoding (odd token count, a non-integer or negative token, a zero
    length, or runs that do not fit the image)."""


class RLEOverrunError(RLEError):
    """Runs that end past the last pixel: they need ``needed`` pixels, the image has
    ``height * width``."""

    def __init__(self, needed: int, height: int, width: int):
        self.needed, self.height, self.width = int(needed), int(height), int(width)
        size = self.height * self.width
        super().__init__(
            f"runs end at pixel {needed}, past the {height}x{width} image ({size} pixels)"
        )

    def __reduce__(self) -> tuple:
        return (type(self), (self.needed, self.height, self.width))


def runs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """``rle`` -> (absolute starts, lengths), two ``(N,)`` int64 arrays (N = 0 for ``-1``).

    Absolute start ``i`` = relative start ``i`` + end of run ``i - 1`` (Kaggle ``rle2mask``).
    Raises :class:`RLEError` on malformed input; does not know the image size.
    """
    if not isinstance(rle, str):
        raise RLEError(f"encoding must be a string, got {type(rle).__name__}")
    tokens = rle.split()
    if tokens == [EMPTY]:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not tokens:
        raise RLEError("empty encoding (use -1 for an empty mask)")
    if len(tokens) % 2:
        raise RLEError(f"odd number of tokens ({len(tokens)}); expected start/length pairs")
    values = []
    for i, token in enumerate(tokens):
        if not _DIGITS.fullmatch(token):
            kind = "negative" if token.startswith("-") else "non-integer"
            raise RLEError(f"{kind} token at position {i}")
        value = int(token)
        if value >= _MAX_TOKEN:
            raise RLEError(f"token at position {i} is too large")
        values.append(value)
    pairs = np.asarray(values, np.int64).reshape(-1, 2)
    relative, lengths = pairs[:, 0], pairs[:, 1]
    if (lengths < 1).any():
        i = int(np.flatnonzero(lengths < 1)[0])
        raise RLEError(f"run {i} has length {int(lengths[i])}; lengths must be >= 1")
    ends = np.cumsum(relative + lengths)
    return ends - lengths, lengths


def extent(rle: str) -> int:
    """Pixels the encoding spans: the end (exclusive) of its last run, 0 for ``-1``."""
    starts, lengths = runs(rle)
    return int(starts[-1] + lengths[-1]) if len(starts) else 0


def decode(rle: str, height: int, width: int) -> np.ndarray:
    """``rle`` -> ``(height, width)`` uint8 mask of 0/1 (column-major runs).

    Raises :class:`RLEError` when malformed and :class:`RLEOverrunError` when a run ends
    past ``height * width``.
    """
    starts, lengths = runs(rle)
    size = int(height) * int(width)
    if len(starts) and starts[-1] + lengths[-1] > size:
        raise RLEOverrunError(int(starts[-1] + lengths[-1]), height, width)
    edges = np.zeros(size + 1, np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + lengths, -1)
    flat = (np.cumsum(edges[:-1]) > 0).astype(np.uint8)
    return np.ascontiguousarray(flat.reshape(width, height).T)


def decode_many(rles: Iterable[str], height: int, width: int) -> np.ndarray:
    """The OR of several encodings of one image (SIIM lists one row per region):
    ``(height, width)`` uint8. No encodings, or only ``-1``, give the empty mask."""
    mask = np.zeros((int(height), int(width)), np.uint8)
    for rle in rles:
        mask |= decode(rle, height, width)
    return mask


def encode(mask: np.ndarray) -> str:
    """``(H, W)`` mask (nonzero = foreground) -> relative column-major RLE; ``-1`` if empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    pixels = np.concatenate([[False], mask.T.ravel() != 0, [False]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1])
    if not len(changes):
        return EMPTY
    starts, ends = changes[0::2], changes[1::2]
    relative = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(
        f"{s} {n}" for s, n in zip(relative.tolist(), (ends - starts).tolist(), strict=True)
    )
