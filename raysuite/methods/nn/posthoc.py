"""Post-hoc search of ``one_case_cascade`` (seed 004) on saved validation predictions.

The classifier and the U-Net predict the validation split once (:class:`Predictions`, saved
with :func:`save_predictions`); the pixel threshold, the classifier threshold, a minimum mask
area and test-time augmentation are then searched on those predictions without retraining
(thesis §5.2 "post-processing": ArgMax, threshold search over (0.01, 1), TTA), and the chosen
values are evaluated once on the test split (:func:`thesis_space` is the thesis' own search:
the pixel threshold and TTA; :func:`default_space` also tunes the classifier threshold and a
minimum area, beyond the thesis). Classifier gating is the thesis' Algorithm 1
(§4.1.2): the CNN empties the masks of the images it calls normal. Scores are those of §5.1
and Table 5.1: the competition's Dice per image, global Dice and IoU.

Probabilities are stored quantised as ``round(p * 255)`` (uint8). A pixel threshold therefore
acts on levels: with TTA ``none`` a pixel is foreground when its level exceeds
``floor(t * 255)``; with ``flip`` the two levels are summed and compared with
``floor(t * 510)`` (:func:`threshold_level`). Every threshold between two levels gives the
same masks, which :class:`StatsCache` exploits.

The search is the generic one of :mod:`raysuite.methods.knobs`: :func:`evaluator` is its
``evaluate(**knobs)`` over one :class:`Predictions` (sharing a :class:`StatsCache`),
:func:`grid_space` / :func:`thesis_space` / :func:`default_space` its grids, and
:func:`search_table` turns its rows into the table (:func:`results_table`'s order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import pandas as pd

from raysuite.methods.knobs import Choice
from raysuite.methods.nn.cls_metrics import precision_recall_f1

TTA = Literal["none", "flip"]
TTA_MODES: tuple[TTA, ...] = ("none", "flip")
#: The knobs of :func:`evaluate` (and of :func:`evaluator`), in the grid's order.
KNOBS = ("tta", "pixel_threshold", "cls_threshold", "min_area")
# number of quantisation steps of the TTA probability: one uint8 level, or the sum of two
_SCALE = {"none": 255, "flip": 510}

#: The thesis' ArgMax row (§5.2, Table 5.1): foreground where the two-class softmax gives the
#: foreground class more than 0.5, the classifier at 0.5, no area filter, no TTA.
ARGMAX: Mapping[str, float | int | str] = MappingProxyType(
    {"pixel_threshold": 0.5, "cls_threshold": 0.5, "min_area": 0, "tta": "none"}
)


def _check_mode(tta: str) -> None:
    if tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; expected one of {TTA_MODES}")


@dataclass
class Predictions:
    """Validation (or test) predictions of the classifier and the U-Net, kept for the search.

    ``seg``: (N, 2, H, W) uint8, foreground probability quantised by :func:`quantise`; index 0
    is the prediction on the image, index 1 the prediction on the horizontally flipped image,
    flipped back (:func:`flip_back`). ``truth``: (N, H, W) bool ground-truth masks. ``cls``:
    (N, 2) float32 classifier probability (plain, flipped), or None when the pair has no
    classifier (the baseline arm: nothing is gated).
    """

    seg: np.ndarray
    truth: np.ndarray
    cls: np.ndarray | None = None

    def __post_init__(self) -> None:
        seg = self.seg
        if seg.dtype != np.uint8 or seg.ndim != 4 or seg.shape[1] != 2:
            raise ValueError(f"seg must be (N, 2, H, W) uint8, got {seg.dtype} {seg.shape}")
        self.truth = np.asarray(self.truth, dtype=bool)
        n, _, h, w = seg.shape
        if self.truth.shape != (n, h, w):
            raise ValueError(f"truth must be {(n, h, w)}, got {self.truth.shape}")
        if self.cls is not None:
            self.cls = np.asarray(self.cls, dtype=np.float32)
            if self.cls.shape != (n, 2):
                raise ValueError(f"cls must be {(n, 2)}, got {self.cls.shape}")

    @property
    def labels(self) -> np.ndarray:
        """(N,) bool: the image has a non-empty ground-truth mask."""
        return np.asarray(self.truth.any(axis=(1, 2)))


def quantise(p: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] (any float shape) -> uint8 ``round(p * 255)``, same shape."""
    return np.rint(np.clip(p, 0.0, 1.0) * 255).astype(np.uint8)


def flip_back(x: np.ndarray) -> np.ndarray:
    """Horizontal flip along the last axis (a view); its own inverse.

    TTA (§5.2): predict on ``flip_back(image)``, then ``flip_back`` the output to align it.
    """
    return np.flip(x, axis=-1)


def save_predictions(path: str | PathLike[str], pred: Predictions) -> None:
    """Write ``pred`` to one ``np.savez_compressed`` file at exactly ``path``.

    The truth masks are bit-packed (``np.packbits``) with their shape; ``cls`` is stored only
    when present.
    """
    arrays = {
        "seg": pred.seg,
        "truth": np.packbits(pred.truth, axis=None),
        "truth_shape": np.asarray(pred.truth.shape, dtype=np.int64),
    }
    if pred.cls is not None:
        arrays["cls"] = pred.cls
    with open(path, "wb") as f:  # a file object: numpy appends no ".npz" to the name
        np.savez_compressed(f, **arrays)


def load_predictions(path: str | PathLike[str]) -> Predictions:
    """Read a file written by :func:`save_predictions`; the round trip is exact."""
    with np.load(path) as data:
        shape = tuple(int(s) for s in data["truth_shape"])
        truth = np.unpackbits(data["truth"], count=math.prod(shape)).reshape(shape).astype(bool)
        cls = data["cls"] if "cls" in data.files else None
        return Predictions(seg=data["seg"], truth=truth, cls=cls)


def tta_probability(seg: np.ndarray, mode: str) -> np.ndarray:
    """(N, 2, H, W) uint8 -> (N, H, W) float32 foreground probability in [0, 1].

    ``none``: the plain prediction (index 0); ``flip``: the mean of both (§5.2 TTA). Computed
    as level sum / scale so that a decimal threshold equal to a level compares as that level.
    """
    _check_mode(mode)
    if mode == "none":
        return seg[:, 0].astype(np.float32) / _SCALE[mode]
    return seg.sum(axis=1, dtype=np.float32) / _SCALE[mode]


def tta_cls_probability(cls: np.ndarray, mode: str) -> np.ndarray:
    """(N, 2) float32 classifier probabilities -> (N,): column 0, or the mean under ``flip``."""
    _check_mode(mode)
    return cls[:, 0] if mode == "none" else cls.mean(axis=1)


def threshold_level(threshold: float, tta: str) -> int:
    """The quantisation level a pixel threshold acts on: ``floor(t * scale)``.

    Scale is 255 for ``none`` and 510 for ``flip`` (sum of two levels). The product is rounded
    to 6 decimals first so that a decimal threshold that is exactly a level (0.6 = 153/255) is
    not pushed to the level below by binary rounding.
    """
    _check_mode(tta)
    return math.floor(round(threshold * _SCALE[tta], 6))


def image_stats(
    prob: np.ndarray, truth: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image pixel counts of the prediction ``prob > threshold`` (strictly greater).

    ``prob``: (N, H, W) float; ``truth``: (N, H, W) bool. Returns ``(inter, area, true_area)``,
    each (N,) int64. Threshold 0.5 is the ArgMax of a two-class softmax (§5.2). The threshold
    is compared in ``prob``'s dtype.
    """
    mask = prob > prob.dtype.type(threshold)
    inter = (mask & truth).sum(axis=(1, 2), dtype=np.int64)
    area = mask.sum(axis=(1, 2), dtype=np.int64)
    true_area = truth.sum(axis=(1, 2), dtype=np.int64)
    return inter, area, true_area


def gate_and_filter(
    area: np.ndarray,
    inter: np.ndarray,
    cls_prob: np.ndarray | None,
    cls_threshold: float,
    min_area: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Empty the masks of gated and of small predictions, on per-image counts.

    ``area``, ``inter``: (N,) int64; ``cls_prob``: (N,) float or None (no gating). An image
    gets an empty mask (area and inter 0) when ``cls_prob < cls_threshold`` (Algorithm 1,
    §4.1.2: the CNN zeroes the masks of images it calls normal) or when ``area < min_area``
    (the usual minimum-area filter). Returns new ``(area, inter)``.
    """
    keep = area >= min_area
    if cls_prob is not None:
        keep &= cls_prob >= cls_threshold
    return np.where(keep, area, 0), np.where(keep, inter, 0)


def gate_masks(masks: np.ndarray, cls_prob: np.ndarray, threshold: float) -> np.ndarray:
    """Algorithm 1 (§4.1.2) on full masks: (N, H, W) bool, (N,) float -> new (N, H, W) bool.

    Masks of images with ``cls_prob < threshold`` become empty.
    """
    return masks & (cls_prob >= threshold)[:, None, None]


def segmentation_scores(
    inter: np.ndarray, area: np.ndarray, true_area: np.ndarray
) -> dict[str, float]:
    """Scores of §5.1 / Table 5.1 from (N,) int per-image counts.

    ``dice_per_image``: mean over images of ``2 inter / (area + true_area)``, 1 when both
    masks are empty (the competition metric); ``dice``: ``2 Σinter / (Σarea + Σtrue_area)``;
    ``iou``: ``Σinter / (Σarea + Σtrue_area - Σinter)``; global scores are 1 for 0/0.
    """
    sizes = area + true_area
    per_image = np.where(sizes == 0, 1.0, 2 * inter / np.maximum(sizes, 1))
    total_inter, total_sizes = int(inter.sum()), int(sizes.sum())
    union = total_sizes - total_inter
    return {
        "dice_per_image": float(per_image.mean()),
        "dice": 2 * total_inter / total_sizes if total_sizes else 1.0,
        "iou": total_inter / union if union else 1.0,
    }


def classifier_scores(
    cls_prob: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float]:
    """Precision, recall and F1 of the gate ``cls_prob >= threshold`` against ``labels``
    (:func:`~raysuite.methods.nn.cls_metrics.precision_recall_f1`, its conventions for
    empty denominators), keys prefixed ``cls_``. ``cls_prob``: (N,) float; ``labels``: (N,) bool.
    """
    scores = precision_recall_f1(cls_prob >= threshold, labels)
    return {f"cls_{k}": v for k, v in scores.items()}


class StatsCache:
    """Per-image counts of one :class:`Predictions`, computed once per (TTA, threshold level).

    Gating and the area filter only touch per-image numbers, so a whole grid costs one pass
    over the pixels per (TTA mode, level). Thresholds with the same :func:`threshold_level`
    give identical masks and share an entry. The pass goes ``chunk`` images at a time, so the
    memory held is O(chunk · H · W) besides the predictions.
    """

    def __init__(self, pred: Predictions, chunk: int = 64) -> None:
        self.pred = pred
        self.chunk = chunk
        self.true_area = pred.truth.sum(axis=(1, 2), dtype=np.int64)
        self._entries: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        """Number of (TTA, level) entries computed so far."""
        return len(self._entries)

    def stats(self, tta: str, pixel_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(inter, area, true_area)``, each (N,) int64, as :func:`image_stats` returns them."""
        key = (tta, threshold_level(pixel_threshold, tta))
        if key not in self._entries:
            # the midpoint between two levels is immune to float rounding in the comparison
            midpoint = (key[1] + 0.5) / _SCALE[tta]
            inter, area = [], []
            for start in range(0, len(self.true_area), self.chunk):
                part = slice(start, start + self.chunk)
                prob = tta_probability(self.pred.seg[part], tta)
                i, a, _ = image_stats(prob, self.pred.truth[part], midpoint)
                inter.append(i)
                area.append(a)
            self._entries[key] = (np.concatenate(inter), np.concatenate(area))
        return (*self._entries[key], self.true_area)


def evaluate(
    pred: Predictions,
    pixel_threshold: float,
    cls_threshold: float,
    min_area: int,
    tta: str,
    cache: StatsCache | None = None,
) -> dict[str, float | int | str]:
    """Scores of one post-processing combination on ``pred``.

    Returns the combination (``tta``, ``pixel_threshold``, ``cls_threshold``, ``min_area``),
    :func:`segmentation_scores` and, when ``pred`` has a classifier, :func:`classifier_scores`
    at ``cls_threshold`` (classifier probability averaged over both columns under ``flip``).
    Without a classifier nothing is gated and ``cls_threshold`` is reported as NaN. ``cache``
    (built on this ``pred``) saves the pixel pass across calls.
    """
    if cache is None:
        cache = StatsCache(pred)
    elif cache.pred is not pred:
        raise ValueError("cache was built for other predictions")
    inter, area, true_area = cache.stats(tta, pixel_threshold)
    cls_prob = None if pred.cls is None else tta_cls_probability(pred.cls, tta)
    if cls_prob is None:
        cls_threshold = math.nan
    area, inter = gate_and_filter(area, inter, cls_prob, cls_threshold, min_area)
    row: dict[str, float | int | str] = {
        "tta": tta,
        "pixel_threshold": float(pixel_threshold),
        "cls_threshold": float(cls_threshold),
        "min_area": int(min_area),
        **segmentation_scores(inter, area, true_area),
    }
    if cls_prob is not None:
        row.update(classifier_scores(cls_prob, pred.labels, cls_threshold))
    return row


def results_table(rows: Iterable[Mapping[str, float | int | str]]) -> pd.DataFrame:
    """Rows of :func:`evaluate` -> a table sorted best first.

    Order: ``dice_per_image`` then ``dice`` (descending), then the simpler combination (TTA
    ``none`` before ``flip``, lower ``min_area``); remaining ties keep their input order.
    """
    table = pd.DataFrame(list(rows))
    table = table.assign(tta_rank=table["tta"].map(TTA_MODES.index)).sort_values(
        ["dice_per_image", "dice", "tta_rank", "min_area"],
        ascending=[False, False, True, True],
        kind="stable",
    )
    return table.drop(columns="tta_rank").reset_index(drop=True)


#: The thesis' classifier gate (§4.1.2 Algorithm 1: the CNN's class decision, ``cnn_pred == 0``
#: empties the mask): a two-class softmax calls an image abnormal at probability 0.5.
THESIS_CLS_THRESHOLD = 0.5
#: The thesis' pixel thresholds (§5.2: "a series of thresholds between (0.01, 1)"; the step,
#: 0.01, is ours): 0.01, 0.02, ..., 0.99.
THESIS_PIXEL_THRESHOLDS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 100))


def thesis_space() -> dict[str, Choice]:
    """The thesis' post-processing (§5.2, Table 5.1), the default of ``one_case_cascade``.

    A pixel threshold searched in (0.01, 1) ("a series of thresholds between (0.01, 1)";
    the step, 0.01, is ours), with and without the flip TTA; the classifier gates at its
    class decision (:data:`THESIS_CLS_THRESHOLD`) and no minimum-area filter is applied
    (the thesis has none). A :func:`grid_space`.
    """
    return grid_space(
        pixel_thresholds=THESIS_PIXEL_THRESHOLDS,
        cls_thresholds=[THESIS_CLS_THRESHOLD],
        min_areas=[0],
        tta=TTA_MODES,
    )


def default_space() -> dict[str, Choice]:
    """A wider grid, beyond the thesis (its search also tunes a minimum mask area and the
    classifier threshold, which the thesis does not): pixel thresholds 0.05..0.95 step
    0.05, classifier thresholds 0.1..0.9 step 0.1, minimum areas (0, 64, 256, 1024) pixels
    at the prediction size, TTA none / flip. :func:`thesis_space` is the thesis' own.
    """
    return grid_space(
        pixel_thresholds=[round(0.05 * i, 2) for i in range(1, 20)],
        cls_thresholds=[round(0.1 * i, 1) for i in range(1, 10)],
        min_areas=[0, 64, 256, 1024],
        tta=TTA_MODES,
    )


def thesis_row(
    pred: Predictions, pixel_thresholds: Iterable[float], tta: str, cache: StatsCache | None = None
) -> dict[str, float | int | str]:
    """Table 5.1's Raw (``tta="none"``) or TTA (``tta="flip"``) row: the best of
    ``pixel_thresholds`` by :func:`results_table`'s order, the classifier gating at
    :data:`THESIS_CLS_THRESHOLD`, no minimum area. Returns that :func:`evaluate` row."""
    cache = StatsCache(pred) if cache is None else cache
    rows = (evaluate(pred, t, THESIS_CLS_THRESHOLD, 0, tta, cache=cache) for t in pixel_thresholds)
    return results_table(rows).iloc[0].to_dict()


def grid_space(
    pixel_thresholds: Sequence[float],
    cls_thresholds: Sequence[float] | None,
    min_areas: Sequence[int],
    tta: Sequence[str],
) -> dict[str, Choice]:
    """The knobs of :func:`evaluator` as a grid (:class:`~raysuite.methods.knobs.Choice`
    each), in :data:`KNOBS` order: ``tta``, ``pixel_threshold``, ``cls_threshold``,
    ``min_area``. ``cls_thresholds=None`` (predictions without a classifier: nothing is
    gated) leaves ``cls_threshold`` out. Unknown TTA modes and empty lists are refused."""
    for mode in tta:
        _check_mode(mode)
    lists = {
        "tta": tta,
        "pixel_threshold": pixel_thresholds,
        "cls_threshold": cls_thresholds,
        "min_area": min_areas,
    }
    return {name: Choice(tuple(values)) for name, values in lists.items() if values is not None}


def evaluator(
    pred: Predictions, cache: StatsCache | None = None
) -> Callable[..., dict[str, float]]:
    """``evaluate(**knobs) -> metrics`` over ``pred`` for a
    :class:`~raysuite.methods.knobs.PosthocSearch`: keyword knobs ``tta``,
    ``pixel_threshold``, ``min_area`` and, when ``pred`` has a classifier, ``cls_threshold``
    (required then, absent otherwise); returns :func:`evaluate`'s scores without the knobs.
    Every call shares ``cache`` (one is made when None), so a pixel pass is never repeated."""
    cache = StatsCache(pred) if cache is None else cache
    if cache.pred is not pred:
        raise ValueError("cache was built for other predictions")

    def evaluate_knobs(
        tta: str, pixel_threshold: float, min_area: int, cls_threshold: float | None = None
    ) -> dict[str, float]:
        if (cls_threshold is None) != (pred.cls is None):
            why = (
                "have a classifier: give a"
                if pred.cls is not None
                else "have no classifier: give no"
            )
            raise ValueError(f"these predictions {why} cls_threshold")
        cls = math.nan if cls_threshold is None else cls_threshold
        result = evaluate(pred, pixel_threshold, cls, min_area, tta, cache=cache)
        return {k: float(v) for k, v in result.items() if k not in KNOBS}

    return evaluate_knobs


def search_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows of a search of :func:`evaluator` (``{**knobs, **metrics}``) -> :func:`results_table`:
    columns ``tta, pixel_threshold, cls_threshold, min_area`` (``cls_threshold`` NaN without a
    classifier), then the scores of :func:`evaluate`; best first by its order."""
    return results_table(
        {
            "tta": str(r["tta"]),
            "pixel_threshold": float(r["pixel_threshold"]),
            "cls_threshold": float(r.get("cls_threshold", math.nan)),
            "min_area": int(r["min_area"]),
            **{k: v for k, v in r.items() if k not in KNOBS},
        }
        for r in rows
    )
