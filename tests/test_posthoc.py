"""Post-hoc search of ``one_case_cascade`` (seed 004): metrics, gating, TTA, cache, and its
search through the generic knob protocol (raysuite.methods.knobs, tune.posthoc_search)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from raysuite.methods.knobs import Choice, FloatRange, IntRange, grid_search, search_posthoc
from raysuite.methods.nn.posthoc import (
    ARGMAX,
    KNOBS,
    Predictions,
    StatsCache,
    classifier_scores,
    default_space,
    evaluate,
    evaluator,
    flip_back,
    gate_and_filter,
    gate_masks,
    grid_space,
    image_stats,
    load_predictions,
    quantise,
    save_predictions,
    search_table,
    segmentation_scores,
    thesis_row,
    thesis_space,
    threshold_level,
    tta_probability,
)
from raysuite.tune.posthoc_search import optuna_search


def _masks(*pixel_lists: list[tuple[int, int]], shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    masks = np.zeros((len(pixel_lists), *shape), dtype=bool)
    for i, pixels in enumerate(pixel_lists):
        for r, c in pixels:
            masks[i, r, c] = True
    return masks


def _scores(pred_masks: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return segmentation_scores(*image_stats(pred_masks.astype(np.float32), truth, 0.5))


SQUARE = [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_dice_per_image_both_empty_is_one():
    empty = _masks([])
    assert _scores(empty, empty)["dice_per_image"] == 1.0


def test_dice_per_image_prediction_on_empty_truth_is_zero():
    assert _scores(_masks([(2, 2), (3, 3)]), _masks([]))["dice_per_image"] == 0.0


def test_dice_per_image_partial_overlap():
    # truth 4 px, prediction 2 px inside it: 2 * 2 / (2 + 4)
    scores = _scores(_masks([(0, 0), (1, 1)]), _masks(SQUARE))
    assert scores["dice_per_image"] == pytest.approx(2 * 2 / 6)


def test_global_scores_by_hand():
    # image 0: both empty; image 1: 3 px on an empty truth; image 2: 2 px inside a 4 px truth
    pred = _masks([], [(3, 1), (3, 2), (3, 3)], [(0, 0), (1, 1)])
    truth = _masks([], [], SQUARE)
    scores = _scores(pred, truth)
    inter, area, true_area = 2, 3 + 2, 4
    assert scores["dice_per_image"] == pytest.approx((1 + 0 + 2 * 2 / 6) / 3)
    assert scores["dice"] == pytest.approx(2 * inter / (area + true_area))  # 4 / 9
    assert scores["iou"] == pytest.approx(inter / (area + true_area - inter))  # 2 / 7


def test_global_scores_all_empty_are_one():
    empty = _masks([], [])
    assert _scores(empty, empty) == {"dice_per_image": 1.0, "dice": 1.0, "iou": 1.0}


def test_image_stats_is_strictly_greater():
    prob = np.array([[[0.5, 0.6], [0.4, 0.5]]], dtype=np.float32)
    truth = np.array([[[True, True], [False, False]]])
    inter, area, true_area = image_stats(prob, truth, 0.5)
    assert (inter.tolist(), area.tolist(), true_area.tolist()) == ([1], [1], [2])
    assert inter.dtype == area.dtype == true_area.dtype == np.int64


def test_gating_below_threshold_empties_at_or_above_keeps():
    masks = _masks(SQUARE, SQUARE, SQUARE)
    truth = _masks(SQUARE, [(0, 0)], [])
    cls_prob = np.array([0.3, 0.5, 0.7], dtype=np.float32)
    gated = gate_masks(masks, cls_prob, 0.5)
    assert gated.sum(axis=(1, 2)).tolist() == [0, 4, 4]
    assert masks.sum() == 12  # the input is left alone
    inter, area, _ = image_stats(masks.astype(np.float32), truth, 0.5)
    area_g, inter_g = gate_and_filter(area, inter, cls_prob, 0.5, min_area=0)
    inter_m, area_m, _ = image_stats(gated.astype(np.float32), truth, 0.5)
    assert area_g.tolist() == area_m.tolist() == [0, 4, 4]
    assert inter_g.tolist() == inter_m.tolist() == [0, 1, 0]


def test_gate_and_filter_without_classifier_and_min_area():
    area = np.array([0, 3, 4, 9], dtype=np.int64)
    inter = np.array([0, 1, 4, 2], dtype=np.int64)
    assert [a.tolist() for a in gate_and_filter(area, inter, None, math.nan, 0)] == [
        [0, 3, 4, 9],
        [0, 1, 4, 2],
    ]
    area_f, inter_f = gate_and_filter(area, inter, None, math.nan, min_area=4)
    assert area_f.tolist() == [0, 0, 4, 9]
    assert inter_f.tolist() == [0, 0, 4, 2]


def test_classifier_scores_by_hand():
    cls_prob = np.array([0.9, 0.6, 0.2, 0.7, 0.1])
    labels = np.array([True, False, True, True, False])
    scores = classifier_scores(cls_prob, labels, 0.6)  # tp 2, fp 1, fn 1
    assert scores == pytest.approx({"cls_precision": 2 / 3, "cls_recall": 2 / 3, "cls_f1": 4 / 6})
    assert classifier_scores(cls_prob, labels, 0.95)["cls_precision"] == 0.0  # nothing gated in


def test_flip_back_is_its_own_inverse():
    x = np.arange(24).reshape(2, 3, 4)
    assert flip_back(x)[..., 0].tolist() == x[..., -1].tolist()
    assert np.array_equal(flip_back(flip_back(x)), x)


def test_tta_flip_back_exact_for_flip_equivariant_model():
    rng = np.random.default_rng(0)
    half = rng.random((3, 8, 4))
    image = np.concatenate([half, flip_back(half)], axis=-1)  # left-right symmetric

    def model(x: np.ndarray) -> np.ndarray:  # a symmetric horizontal blur: flip-equivariant
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1)), mode="edge")
        return (padded[..., :-2] + 2 * padded[..., 1:-1] + padded[..., 2:]) / 4

    plain = model(image)
    flipped = flip_back(model(flip_back(image)))
    seg = np.stack([quantise(plain), quantise(flipped)], axis=1)
    assert np.array_equal(seg[:, 0], seg[:, 1])
    assert np.array_equal(tta_probability(seg, "flip"), tta_probability(seg, "none"))


def test_tta_probability_modes():
    seg = np.array([[[[0, 255]], [[255, 100]]]], dtype=np.uint8)  # (1, 2, 1, 2)
    assert tta_probability(seg, "none").tolist() == [[[0.0, 1.0]]]
    assert tta_probability(seg, "flip") == pytest.approx(np.array([[[0.5, 355 / 510]]]))
    assert tta_probability(seg, "none").dtype == np.float32
    with pytest.raises(ValueError, match="unknown TTA mode 'rot90'"):
        tta_probability(seg, "rot90")


def test_quantise():
    assert quantise(np.array([0.0, 0.5, 1.0, 0.002, 0.2])).tolist() == [0, 128, 255, 1, 51]


@pytest.mark.parametrize("with_cls", [True, False])
def test_save_load_round_trip(tmp_path, with_cls):
    rng = np.random.default_rng(1)
    pred = Predictions(
        seg=rng.integers(0, 256, (3, 2, 5, 7), dtype=np.uint8),
        truth=rng.random((3, 5, 7)) > 0.5,  # 105 bits: packbits pads the last byte
        cls=rng.random((3, 2)).astype(np.float32) if with_cls else None,
    )
    path = tmp_path / "val_predictions"
    save_predictions(path, pred)
    loaded = load_predictions(path)
    assert np.array_equal(loaded.seg, pred.seg) and loaded.seg.dtype == np.uint8
    assert np.array_equal(loaded.truth, pred.truth) and loaded.truth.dtype == bool
    if with_cls:
        assert np.array_equal(loaded.cls, pred.cls) and loaded.cls.dtype == np.float32
    else:
        assert loaded.cls is None


def _random_predictions(n: int = 6, size: int = 16, seed: int = 2) -> Predictions:
    rng = np.random.default_rng(seed)
    return Predictions(
        seg=rng.integers(0, 256, (n, 2, size, size), dtype=np.uint8),
        truth=rng.random((n, size, size)) > 0.6,
        cls=rng.random((n, 2)).astype(np.float32),
    )


def test_quantisation_levels_share_cache_entries():
    pred = _random_predictions()
    cache = StatsCache(pred)
    # 0.5 * 255 = 127.5 and 0.501 * 255 = 127.755: both level 127; 0.5 * 510 = 255 = 0.5004 * 510
    first = cache.stats("none", 0.5)
    second = cache.stats("none", 0.501)
    assert len(cache) == 1 and all(a is b for a, b in zip(first, second, strict=True))
    cache.stats("flip", 0.5)
    cache.stats("flip", 0.5004)
    assert len(cache) == 2
    cache.stats("none", 0.51)  # level 130
    assert len(cache) == 3


def test_cache_agrees_with_direct_stats_on_every_level():
    pred = _random_predictions()
    cache = StatsCache(pred, chunk=4)  # several chunks
    thresholds = [*default_space()["pixel_threshold"].values, 0.6, 0.2, 0.5, 1 / 3]
    for tta in ("none", "flip"):
        prob = tta_probability(pred.seg, tta)
        for t in thresholds:
            direct = image_stats(prob, pred.truth, t)
            assert all(
                np.array_equal(a, b) for a, b in zip(cache.stats(tta, t), direct, strict=True)
            ), (tta, t)
    assert threshold_level(0.6, "none") == 153 and threshold_level(0.6, "flip") == 306


def _planted(n_pos: int = 20, n_neg: int = 20, size: int = 32, seed: int = 0) -> Predictions:
    """Best pixel threshold 0.55, best classifier threshold in (0.4, 0.6].

    Truth pixels p ~ U(0.55, 0.75), background U(0, 0.5) with a few noise pixels at
    U(0.5, 0.55); negatives carry a 10x10 false-positive blob at U(0.6, 0.7) and classifier
    probability U(0.2, 0.4), positives U(0.6, 0.9).
    """
    rng = np.random.default_rng(seed)
    n = n_pos + n_neg
    truth = np.zeros((n, size, size), dtype=bool)
    blob = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        r, c = rng.integers(0, size - 10, 2)
        (truth if i < n_pos else blob)[i, r : r + 10, c : c + 10] = True
    seg = np.empty((n, 2, size, size), dtype=np.uint8)
    for k in range(2):
        p = rng.uniform(0.0, 0.5, (n, size, size))
        noise = (rng.random((n, size, size)) < 0.003) & ~truth & ~blob
        p[noise] = rng.uniform(0.5, 0.55, noise.sum())
        p[truth] = rng.uniform(0.55, 0.75, truth.sum())
        p[blob] = rng.uniform(0.6, 0.7, blob.sum())
        seg[:, k] = quantise(p)
    cls = np.concatenate([rng.uniform(0.6, 0.9, (n_pos, 2)), rng.uniform(0.2, 0.4, (n_neg, 2))])
    return Predictions(seg=seg, truth=truth, cls=cls.astype(np.float32))


SPACE = grid_space(
    pixel_thresholds=(0.3, 0.55, 0.8),
    cls_thresholds=(0.1, 0.3, 0.5, 0.7, 0.9),
    min_areas=(0, 10),
    tta=("none", "flip"),
)
NO_CLS = {k: v for k, v in SPACE.items() if k != "cls_threshold"}
RANGES = {
    "tta": Choice(("none", "flip")),
    "pixel_threshold": FloatRange(0.3, 0.8),
    "cls_threshold": FloatRange(0.1, 0.9),
    "min_area": IntRange(0, 10),
}


def grid_table(pred: Predictions, space) -> pd.DataFrame:
    """The grid of ``space`` on ``pred`` through the generic protocol, as the job runs it."""
    return search_table(grid_search(evaluator(pred), space, "dice_per_image", "max"))


def optuna_table(pred: Predictions, space, n_trials: int, seed: int) -> pd.DataFrame:
    rows = optuna_search(evaluator(pred), space, "dice_per_image", "max", n_trials, seed)
    return search_table(rows)


@pytest.fixture(scope="module")
def planted() -> Predictions:
    return _planted()


def test_grid_search_finds_planted_thresholds(planted):
    table = grid_table(planted, SPACE)
    assert len(table) == 3 * 5 * 2 * 2
    assert list(table.columns) == [
        "tta", "pixel_threshold", "cls_threshold", "min_area",
        "dice_per_image", "dice", "iou", "cls_precision", "cls_recall", "cls_f1",
    ]  # fmt: skip
    best = table.iloc[0]
    assert best["pixel_threshold"] == 0.55
    assert 0.4 < best["cls_threshold"] <= 0.6
    assert best["dice_per_image"] > 0.95
    assert table["dice_per_image"].is_monotonic_decreasing
    # the chosen row is what evaluate reports for it
    row = evaluate(planted, 0.55, best["cls_threshold"], best["min_area"], best["tta"])
    assert row["dice_per_image"] == best["dice_per_image"] and row["cls_f1"] == 1.0


def test_grid_search_without_classifier_has_no_duplicate_rows(planted):
    baseline = Predictions(seg=planted.seg, truth=planted.truth)
    table = grid_table(baseline, NO_CLS)
    assert len(table) == 3 * 2 * 2
    assert table["cls_threshold"].isna().all()
    assert not table.drop(columns="cls_threshold").duplicated().any()
    assert not any(c.startswith("cls_") and c != "cls_threshold" for c in table.columns)


def test_ties_prefer_the_simpler_combination():
    empty = np.zeros((2, 2, 4, 4), dtype=np.uint8)  # nothing predicted, nothing true
    space = grid_space((0.5,), None, (64, 0), ("flip", "none"))  # no classifier: no cls knob
    table = grid_table(Predictions(seg=empty, truth=np.zeros((2, 4, 4), bool)), space)
    assert table[["tta", "min_area"]].values.tolist() == [
        ["none", 0], ["none", 64], ["flip", 0], ["flip", 64],
    ]  # fmt: skip


def test_argmax_row_and_default_space(planted):
    row = evaluate(planted, **ARGMAX)
    assert {k: row[k] for k in ARGMAX} == dict(ARGMAX)
    space = {name: knob.values for name, knob in default_space().items()}
    assert list(space) == list(KNOBS)
    assert space["pixel_threshold"][0] == 0.05 and space["pixel_threshold"][-1] == 0.95
    assert len(space["pixel_threshold"]) == 19 and len(space["cls_threshold"]) == 9
    assert space["min_area"] == (0, 64, 256, 1024) and space["tta"] == ("none", "flip")
    with pytest.raises(ValueError, match="unknown TTA mode 'rot90'"):
        grid_space((0.5,), (0.5,), (0,), ("none", "rot90"))
    with pytest.raises(ValueError, match="at least one value"):
        grid_space((), (0.5,), (0,), ("none",))


def test_thesis_space_and_its_rows(planted):
    """§5.2 / Table 5.1: pixel thresholds in (0.01, 1), the classifier gating at its class
    decision, no minimum area; Raw and TTA are the best pixel threshold of each TTA mode."""
    space = {name: knob.values for name, knob in thesis_space().items()}
    assert space["pixel_threshold"][:2] == (0.01, 0.02) and space["pixel_threshold"][-1] == 0.99
    assert len(space["pixel_threshold"]) == 99 and space["cls_threshold"] == (0.5,)
    assert space["min_area"] == (0,) and space["tta"] == ("none", "flip")
    pixel_thresholds = SPACE["pixel_threshold"].values
    for tta in ("none", "flip"):
        row = thesis_row(planted, pixel_thresholds, tta)
        rows = [evaluate(planted, t, 0.5, 0, tta) for t in pixel_thresholds]
        best = max(rows, key=lambda r: (r["dice_per_image"], r["dice"]))
        assert row == {k: pytest.approx(v) if isinstance(v, float) else v for k, v in best.items()}
        assert row["cls_threshold"] == 0.5 and row["min_area"] == 0 and row["tta"] == tta


def test_optuna_search_matches_grid_and_is_reproducible(planted):
    grid_best = grid_table(planted, SPACE)["dice_per_image"].iloc[0]
    first = optuna_table(planted, RANGES, n_trials=30, seed=0)
    assert len(first) == 30
    assert list(first.columns) == list(grid_table(planted, SPACE).columns)
    assert first["dice_per_image"].iloc[0] >= grid_best - 0.02
    pd.testing.assert_frame_equal(first, optuna_table(planted, RANGES, n_trials=30, seed=0))


def test_optuna_search_without_classifier_samples_no_cls_threshold(planted):
    baseline = Predictions(seg=planted.seg, truth=planted.truth)
    space = {k: v for k, v in RANGES.items() if k != "cls_threshold"}
    table = optuna_table(baseline, space, n_trials=5, seed=1)
    assert len(table) == 5 and table["cls_threshold"].isna().all()


def test_evaluator_is_evaluate_without_the_knobs(planted):
    """The protocol's ``evaluate(**knobs)``: evaluate's scores, the knobs left to the row;
    one cache for every call, a classifier threshold exactly when there is a classifier."""
    cache = StatsCache(planted)
    scores = evaluator(planted, cache)(tta="flip", pixel_threshold=0.55, min_area=10, cls_threshold=0.5)
    full = evaluate(planted, 0.55, 0.5, 10, "flip")
    assert scores == {k: v for k, v in full.items() if k not in KNOBS} and len(cache) == 1
    assert scores["cls_f1"] == 1.0
    with pytest.raises(ValueError, match="these predictions have a classifier: give a cls_threshold"):
        evaluator(planted)(tta="none", pixel_threshold=0.5, min_area=0)
    baseline = Predictions(seg=planted.seg, truth=planted.truth)
    with pytest.raises(ValueError, match="have no classifier: give no cls_threshold"):
        evaluator(baseline)(tta="none", pixel_threshold=0.5, min_area=0, cls_threshold=0.5)
    with pytest.raises(ValueError, match="cache was built for other predictions"):
        evaluator(baseline, cache)


def test_grid_by_hand_on_two_images():
    """Two 1x2 images, truth (1, 0) and (0, 0), the classifier at 0.9 and 0.2, levels 204/51
    and 153/0 (0.8, 0.2 / 0.6, 0): at pixel 0.5 image 0 is exact and image 1 predicts one false
    pixel unless gated (cls 0.2 < 0.5); at 0.7 image 1 is empty and image 0 keeps its pixel."""
    seg = np.array([[[[204, 51]], [[204, 51]]], [[[153, 0]], [[153, 0]]]], np.uint8)
    truth = np.array([[[True, False]], [[False, False]]])
    pred = Predictions(seg=seg, truth=truth, cls=np.array([[0.9, 0.9], [0.2, 0.2]], np.float32))
    rows = search_posthoc(
        evaluator(pred), grid_space((0.7, 0.5), (0.1, 0.5), (0,), ("none",)), "dice_per_image", "max", None, 0
    )
    # dice per image: (0.7, 0.1) 1, (0.7, 0.5) 1, (0.5, 0.1) (1 + 0) / 2, (0.5, 0.5) 1
    assert [(r["pixel_threshold"], r["cls_threshold"], r["dice_per_image"]) for r in rows] == [
        (0.7, 0.1, 1.0), (0.7, 0.5, 1.0), (0.5, 0.5, 1.0), (0.5, 0.1, 0.5),
    ]  # fmt: skip
    assert rows[3]["dice"] == pytest.approx(2 * 1 / (2 + 1)) and rows[3]["cls_precision"] == 0.5
