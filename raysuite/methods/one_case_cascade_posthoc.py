"""The post-hoc stage of ``one_case_cascade`` (seed 004, thesis §5.2 and Table 5.1).

A job in the trial driver: it loads the ``predict`` stage's saved validation and test
predictions (:mod:`raysuite.methods.nn.posthoc`), searches the post-processing knobs on the
validation split through the generic post-hoc protocol (:mod:`raysuite.methods.knobs`: the
sweep hands in its searcher, grid or Optuna; outside a sweep the grid), and evaluates the
choice once on the test split, beside Table 5.1's ArgMax, Raw and TTA rows. The knobs are
:data:`POSTHOC_KNOBS`; their values come from :class:`PosthocConfig`. The sweep-level
Table 5.1 (:func:`report`) is the method's report hook.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, field_validator

from raysuite.methods import knobs
from raysuite.methods.base import ARTIFACT, StageConfig, StageInputs
from raysuite.methods.nn import posthoc
from raysuite.methods.nn.cls_metrics import roc_auc
from raysuite.report.summary import summarise

#: The knobs the stage searches (``raysuite methods one_case_cascade`` lists them): name -> meaning.
POSTHOC_KNOBS = {
    "pixel_threshold": "a pixel is foreground when the U-Net's foreground probability exceeds it (§5.2; "
    "posthoc.pixel_thresholds, or posthoc.pixel_threshold_range with search: optuna)",
    "cls_threshold": "an image keeps its mask when the classifier's probability reaches it, Algorithm 1's gate "
    "(posthoc.cls_thresholds / cls_threshold_range; absent without a classifier)",
    "min_area": "a mask of fewer pixels is emptied (beyond the thesis; posthoc.min_areas / min_area_range)",
    "tta": "none, or flip: probabilities averaged with the horizontally flipped image's (§5.2; posthoc.tta)",
}


class PosthocConfig(StageConfig):
    """§5.2: thresholds and TTA searched on saved validation predictions. The defaults are
    the thesis' (:func:`raysuite.methods.nn.posthoc.thesis_space`): pixel thresholds
    0.01..0.99, the classifier gating at 0.5 (its class decision), no minimum area, TTA
    none / flip. More classifier thresholds or minimum areas (or ``search: optuna``) go
    beyond the thesis; Table 5.1's Raw and TTA rows stay the thesis' either way, and the
    configured search is the extra "Searched" row."""

    search: Literal["grid", "optuna"] = Field(
        "grid",
        description="grid: every combination of the lists; optuna: optuna_trials TPE trials over the ranges",
    )
    pixel_thresholds: list[float] = Field(
        default_factory=lambda: list(posthoc.THESIS_PIXEL_THRESHOLDS), description="grid of pixel thresholds"
    )  # fmt: skip
    cls_thresholds: list[float] = Field(
        default_factory=lambda: [posthoc.THESIS_CLS_THRESHOLD], description="grid of classifier thresholds"
    )  # fmt: skip
    min_areas: list[int] = Field(
        default_factory=lambda: [0], description="grid of minimum mask areas (pixels)"
    )  # fmt: skip
    tta: list[Literal["none", "flip"]] = Field(
        default_factory=lambda: list(posthoc.TTA_MODES), description="TTA modes tried (grid and Optuna)"
    )  # fmt: skip
    optuna_trials: int = Field(200, ge=1, description="trials of search: optuna")
    pixel_threshold_range: tuple[float, float] = Field(
        (0.01, 0.99), description="search: optuna's pixel thresholds"
    )
    cls_threshold_range: tuple[float, float] = Field(
        (0.01, 0.99), description="search: optuna's classifier thresholds"
    )
    min_area_range: tuple[int, int] = Field(
        (0, 2048), description="search: optuna's minimum areas (inclusive)"
    )

    @field_validator("pixel_thresholds", "cls_thresholds")
    @classmethod
    def _unit(cls, values: list[float]) -> list[float]:
        if not values or any(not 0 <= v < 1 for v in values):
            raise ValueError("thresholds must be a non-empty list in [0, 1)")
        return values

    @field_validator("min_areas", "tta")
    @classmethod
    def _non_empty(cls, values: list[Any]) -> list[Any]:
        if not values:
            raise ValueError("needs at least one value")
        return values

    @field_validator("pixel_threshold_range", "cls_threshold_range")
    @classmethod
    def _float_range(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        knobs.FloatRange(*bounds)  # refuses low > high (before any trial, not after training)
        return bounds

    @field_validator("min_area_range")
    @classmethod
    def _int_range(cls, bounds: tuple[int, int]) -> tuple[int, int]:
        knobs.IntRange(*bounds)
        return bounds

    @property
    def n_trials(self) -> int | None:
        """The searcher's ``n_trials``: None for the grid, ``optuna_trials`` for Optuna."""
        return None if self.search == "grid" else self.optuna_trials

    def space(self, classifier: bool) -> knobs.Space:
        """The knobs of :func:`raysuite.methods.nn.posthoc.evaluator` in its order (``tta``,
        ``pixel_threshold``, ``cls_threshold``, ``min_area``): the lists as Choices for the
        grid; for Optuna the TTA modes as a Choice and the ranges as Float/IntRanges.
        ``classifier=False`` (predictions without one) leaves ``cls_threshold`` out."""
        if self.search == "grid":
            return posthoc.grid_space(
                self.pixel_thresholds,
                self.cls_thresholds if classifier else None,
                self.min_areas,
                self.tta,
            )
        space: dict[str, knobs.Knob] = {
            "tta": knobs.Choice(tuple(self.tta)),
            "pixel_threshold": knobs.FloatRange(*self.pixel_threshold_range),
        }
        if classifier:
            space["cls_threshold"] = knobs.FloatRange(*self.cls_threshold_range)
        space["min_area"] = knobs.IntRange(*self.min_area_range)
        return space


# Table 5.1's post-processing rows, and the configured search as an extra row
SEARCHED = "Searched (beyond the thesis)"
ROWS = {"argmax": "ArgMax", "raw": "Raw", "tta": "TTA", "search": SEARCHED}
SCORES = ("dice_per_image", "dice", "iou")
OBJECTIVE = "dice_per_image"  # the competition's metric (§5.1), maximised


def posthoc_job(inp: StageInputs[PosthocConfig], out: Path) -> dict[str, Any]:
    """Search on the saved validation predictions, evaluate the choice once on test.

    The search: ``inp.posthoc_search`` (the sweep's; :func:`~raysuite.methods.knobs.search_posthoc`,
    the grid, outside a sweep) over :meth:`PosthocConfig.space`, maximising ``dice_per_image``
    of :func:`~raysuite.methods.nn.posthoc.evaluator` on the validation predictions, its rows
    ordered by :func:`~raysuite.methods.nn.posthoc.results_table`. Table 5.1's rows (§5.2) as
    ``{val,test}/<row>/*``: ``argmax`` (pixel and classifier at 0.5), ``raw`` (the pixel
    threshold searched, nothing else) and ``tta`` (the same on the flip-averaged prediction),
    with the classifier gating at its class decision and no minimum area; ``search``, the extra
    row: the best combination of the configured search (beyond the thesis when it also tunes a
    minimum area or the classifier threshold), which is also ``val/*`` and ``test/*`` and whose
    values are ``posthoc/*``. Two artifacts: every combination tried
    (``posthoc/val_search.csv``) and ``posthoc/table_5_1.csv``. One
    :class:`~raysuite.methods.nn.posthoc.StatsCache` per split serves the search and every row,
    so no pixel pass is repeated."""
    cfg = inp.cfg
    src = inp.upstreams["predict"]
    val, test = (
        posthoc.load_predictions(src / "val.npz"),
        posthoc.load_predictions(src / "test.npz"),
    )
    caches = {"val": posthoc.StatsCache(val), "test": posthoc.StatsCache(test)}
    searcher = inp.posthoc_search or knobs.search_posthoc
    rows = searcher(
        posthoc.evaluator(val, caches["val"]),
        cfg.space(val.cls is not None),
        OBJECTIVE,
        "max",
        cfg.n_trials,
        cfg.seed,
    )
    table = posthoc.search_table(rows)
    chosen = {"overall": _params(table.iloc[0].to_dict()), "argmax": dict(posthoc.ARGMAX)}
    for row, mode in (("raw", "none"), ("tta", "flip")):
        chosen[row] = _params(posthoc.thesis_row(val, cfg.pixel_thresholds, mode, caches["val"]))
    chosen["search"] = chosen["overall"]
    metrics: dict[str, Any] = {}
    table_rows = []
    for name, params in chosen.items():
        for split, pred in (("val", val), ("test", test)):
            result = posthoc.evaluate(pred, **params, cache=caches[split])
            prefix = split if name == "overall" else f"{split}/{name}"
            metrics.update({f"{prefix}/{k}": float(result[k]) for k in SCORES})
            if name == "overall":
                metrics.update(_classifier_metrics(split, pred, params, result))
            else:
                table_rows.append(
                    {"row": ROWS[name], "split": split, **params, **{k: result[k] for k in SCORES}}
                )
    best = chosen["overall"]
    metrics.update({
        "posthoc/pixel_threshold": best["pixel_threshold"], "posthoc/min_area": float(best["min_area"]),
        "posthoc/cls_threshold": best["cls_threshold"] if val.cls is not None else math.nan,
        "posthoc/tta_flip": float(best["tta"] == "flip"), "posthoc/combinations": float(len(table)),
        # logged one step after the segmenter's last epoch
        "posthoc/epoch": float(inp.stages["segmenter"]["epochs"] + 1),
        f"{ARTIFACT}posthoc/val_search.csv": table.to_csv(index=False),
        f"{ARTIFACT}posthoc/table_5_1.csv": pd.DataFrame(table_rows).to_csv(index=False),
    })  # fmt: skip
    return metrics


def _params(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A table row's knobs as :func:`~raysuite.methods.nn.posthoc.evaluate`'s keywords (a NaN
    classifier threshold, no classifier, becomes 0: nothing is gated either way)."""
    cls = row.get("cls_threshold", math.nan)
    return {
        "pixel_threshold": float(row["pixel_threshold"]), "cls_threshold": 0.0 if pd.isna(cls) else float(cls),
        "min_area": int(row["min_area"]), "tta": str(row["tta"]),
    }  # fmt: skip


def _classifier_metrics(
    split: str, pred: posthoc.Predictions, params: dict[str, Any], result: dict[str, Any]
) -> dict[str, float]:
    """AUC of the classifier (under the chosen TTA) and its gate's precision/recall/F1."""
    if pred.cls is None:
        return {}
    out = {
        f"{split}/cls_auc": roc_auc(
            posthoc.tta_cls_probability(pred.cls, params["tta"]), pred.labels
        )
    }
    out.update(
        {f"{split}/{k}": float(result[k]) for k in ("cls_precision", "cls_recall", "cls_f1")}
    )
    return out


def report(trials: pd.DataFrame, out: Path, metric: str) -> list[Path]:
    """The seed's Table 5.1 on the parent run: per configuration (arm) and post-processing
    row, mean ± std over folds (:func:`~raysuite.report.summary.summarise`) of Dice per
    image, Dice and IoU on the validation folds and on the test split."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, label in ROWS.items():
        for split in ("val", "test"):
            for score in SCORES:
                column = f"{split}/{key}/{score}"
                if column not in trials:
                    continue
                for r in summarise(trials, column).to_dict("records"):
                    row = rows.setdefault(
                        (r["config"], label),
                        {"config": r["config"], "postprocessing": label, "n": r["n"]},
                    )
                    row[f"{split} {score}"] = r["mean ± std"]
    if not rows:
        return []
    path = out / "table_5_1.csv"
    pd.DataFrame(sorted(rows.values(), key=lambda r: r["config"])).to_csv(path, index=False)
    return [path]
