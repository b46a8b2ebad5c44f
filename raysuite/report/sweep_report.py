"""The report of one sweep: what ``raysuite report`` writes and what a sweep leaves on its
parent run when it ends (the same files, by the same code).

Files, in ``out`` and as the parent run's artifacts:
``summary.csv`` (one row per configuration: n, mean, std (ddof = 0), 95 % CI of the
objective and of every other final metric, a bounded metric's CI clipped to [0, 1],
GPU/CPU-hours, cost), ``comparison.csv`` (each configuration vs its baseline, paired t and
Wilcoxon over shared seeds/folds, Holm-adjusted across the configurations compared),
``trials.csv`` (one row per trial with its cost), the method's own tables (Figure 5.1,
Table 1, ...), the plots, and ``report.html`` holding all of it: the method's paper at the
top, the skipped configurations, and the "Departures from the seed" the parent run's
``departures.md`` records (the method's ledger and every value of the sweep that differs
from the seed's design). Cost totals and trial counts also go to the parent
(``cost/*``, ``trials/finished``, ``trials/failed``).
"""

from __future__ import annotations

import html as _html
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from raysuite.departures import departures_of
from raysuite.methods import METHODS
from raysuite.report import html, plots
from raysuite.report.stats import bounds_of
from raysuite.report.tables import (
    STATS,
    baseline_comparison,
    baseline_configs,
    decode,
    summary_table,
    sweep_cost,
    trial_cost,
    with_pruned,
)
from raysuite.spec import LogUniform, Spec
from raysuite.track import mlflow_runs as track

COLLAPSE = "pretrain/collapse"
DEPARTURES = "departures.md"  # the parent run's ledger (raysuite.tune.sweep.DEPARTURES)
SKIPPED = "skipped.txt"
# (points: a column per searched key and objective, space, mode) -> {parameter: importance}
Importances = Callable[[pd.DataFrame, Mapping[str, Any], Literal["max", "min"]], dict[str, float]]
CLIP_MARK = "†"


@dataclass
class SweepRuns:
    """A sweep as its MLflow runs hold it. ``trials``: :func:`track.child_table` with the
    objective column renamed ``objective``; ``histories``: run_id -> [(epoch, value)] of the
    objective metric; ``collapse``: the same for ``pretrain/collapse``; ``skipped``: the
    lines of the parent's ``skipped.txt``; ``departures``: the parent's ``departures.md``
    (None when it has none: a sweep older than the ledger)."""

    parent_id: str
    experiment: str
    trials: pd.DataFrame
    metrics: list[str]
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    collapse: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    departures: str | None = None


@dataclass
class Report:
    files: list[Path]
    summary: pd.DataFrame
    comparison: pd.DataFrame
    cost: dict[str, float]
    trials: pd.DataFrame  # as fetched: every trial, failed ones included


def fetch(client: Any, spec: Spec, parent_id: str) -> SweepRuns:
    """Read the sweep under ``parent_id`` back from MLflow."""
    trials = track.child_table(client, parent_id)
    metrics = list(trials.attrs.get("metrics", []))
    column = spec.objective.column
    trials = (
        trials.rename(columns={column: "objective"})
        if column in trials
        else trials.assign(objective=math.nan)
    )
    runs = trials.run_id.tolist() if not trials.empty else []
    histories = {r: track.metric_history(client, r, spec.objective.metric) for r in runs}
    collapse = (
        {r: track.metric_history(client, r, COLLAPSE) for r in runs} if COLLAPSE in metrics else {}
    )
    skipped = (track.read_text(client, parent_id, SKIPPED) or "").splitlines()
    departures = track.read_text(client, parent_id, DEPARTURES)
    info = track.run_info(client, parent_id)
    return SweepRuns(parent_id, info["experiment"], trials, [m for m in metrics if m != column],
                     histories, collapse, [s for s in skipped if s], departures)  # fmt: skip


def baseline_of(spec: Spec) -> str | dict[str, Any]:
    return (
        spec.search.baseline if spec.search.baseline is not None else METHODS[spec.method].baseline
    )


def write_report(spec: Spec, runs: SweepRuns, out: Path, importances: Importances | None = None) -> Report:
    """Write every file of the report into ``out`` (see the module docstring). ``importances``
    ranks an Optuna study's parameters (``tune.optuna_importance.param_importances``: the
    caller hands it in, so the report needs no Optuna); without it no importance plot."""
    out.mkdir(parents=True, exist_ok=True)
    trials = runs.trials
    finished = trials.loc[trials.status == "FINISHED"] if not trials.empty else trials
    resources = spec.resources.model_dump()
    metric = spec.objective.column
    summary = (
        summary_table(finished, runs.metrics, resources, spec.objective.metric)
        if not finished.empty
        else pd.DataFrame()
    )
    if not summary.empty:
        summary = summary.sort_values(
            "mean", ascending=spec.objective.mode == "min", ignore_index=True
        )
    if not trials.empty:
        summary = with_pruned(summary, trials)
    if not summary.empty:
        summary.insert(0, "metric", metric)
    baseline = baseline_of(spec)
    bases = baseline_configs(finished, baseline) if baseline and not finished.empty else []
    comparison = baseline_comparison(finished, baseline) if bases else pd.DataFrame()
    per_trial = _trial_table(trials, resources)
    cost = sweep_cost(trials, resources) if not trials.empty else {}
    files = []
    for name, frame in (
        ("summary.csv", summary),
        ("comparison.csv", comparison),
        ("trials.csv", per_trial),
    ):
        (out / name).write_text(frame.to_csv(index=False))
        files.append(out / name)
    method_files = (
        list(METHODS[spec.method].report(finished, out, spec.objective.metric))
        if not finished.empty
        else []
    )
    figures = [f for f in _figures(spec, runs, finished, summary, bases, out, importances) if f is not None]
    files += method_files + figures
    page = _page(spec, runs, summary, comparison, bases, baseline, cost, method_files, figures)
    (out / "report.html").write_text(page)
    files.append(out / "report.html")
    return Report(files, summary, comparison, cost, trials)


def _trial_table(trials: pd.DataFrame, resources: dict[str, Any]) -> pd.DataFrame:
    if trials.empty:
        return pd.DataFrame()
    columns = [
        c
        for c in ("run_id", "config", "repeat", "status", "pruned", "failure", "objective")
        if c in trials
    ]
    return pd.concat([trials[columns], trial_cost(trials, resources)], axis=1)


def _figures(
    spec: Spec,
    runs: SweepRuns,
    finished: pd.DataFrame,
    summary: pd.DataFrame,
    bases: list[str],
    out: Path,
    importances: Importances | None = None,
) -> list[Path | None]:
    if finished.empty:
        return []
    ranked = finished.dropna(subset=["objective"])
    best = None
    if not ranked.empty:
        best = ranked.loc[
            ranked.objective.idxmax()
            if spec.objective.mode == "max"
            else ranked.objective.idxmin(),
            "run_id",
        ]
    figures = [
        plots.config_bars(summary, finished, spec.objective.column, bases, out),
        plots.training_curves(finished, runs.histories, spec.objective.metric, best, out),
        plots.collapse_curves(finished, runs.collapse, out),
    ]
    if spec.search.optuna:
        figures += _optuna_figures(spec, finished, out, importances)
    return figures


def _optuna_figures(
    spec: Spec, finished: pd.DataFrame, out: Path, importances: Importances | None
) -> list[Path | None]:
    """Parallel coordinates and importances of the Optuna study's trials (the grid and arm
    trials beside it have no ``search.*`` value for the space and are left out)."""
    optuna = spec.search.optuna
    assert optuna is not None, "called for an Optuna search only"
    space = optuna.space
    columns = {f"param.search.{k}": k for k in space}
    if not set(columns) <= set(finished.columns):
        return []
    searched = finished.dropna(subset=[*columns, "objective"])
    if len(searched) < 2:
        return []
    points = searched.loc[:, list(columns)].map(decode).rename(columns=columns)
    points["objective"] = searched.objective
    log_axes = [k for k, d in space.items() if isinstance(d, LogUniform)]
    figures = [plots.parallel_coordinates(points, log_axes, spec.objective.column, out)]
    if importances is not None:
        figures.append(plots.importance_bars(importances(points, space, spec.objective.mode), out))
    return figures


def _page(spec: Spec, runs: SweepRuns, summary: pd.DataFrame, comparison: pd.DataFrame, bases: list[str],
          baseline: Any, cost: dict[str, float], method_files: list[Path], figures: list[Path]) -> str:  # fmt: skip
    status = runs.trials.status.value_counts().to_dict() if not runs.trials.empty else {}
    facts = {
        "experiment": runs.experiment, "parent run": runs.parent_id, "method": f"{spec.method} (seed {METHODS[spec.method].seed})",
        "paper": paper.cite() if (paper := METHODS[spec.method].paper) else "(the method names no paper)",
        "objective": f"{spec.objective.column} ({spec.objective.mode})",
        "trials": ", ".join(f"{n} {s.lower()}" for s, n in sorted(status.items())) or "none",
        "baseline": f"{baseline}" + ("" if bases else " (no configuration of this sweep matches it)"),
        "device-hours": f"{cost.get('gpu_hours', 0.0):.3f} GPU-h, {cost.get('cpu_hours', 0.0):.3f} CPU-h (wall time × reserved devices)",
    }  # fmt: skip
    if "cost" in cost:
        facts["cost"] = f"{cost['cost']:.2f} {spec.resources.currency}"
    if runs.skipped:
        facts["skipped"] = "; ".join(runs.skipped)
    ids = summary["config_id"] if "config_id" in summary.columns else []
    highlight = [i for i, cid in enumerate(ids) if cid in bases]
    sections = [
        ("Configurations", f'<p class="note">{spec.objective.column}: mean, std (population, ddof = 0, as '
         "the seeds' tables print it) and the 95 % t-interval of the mean over repeats (Student's t on the "
         "sample std, ddof = 1), and the device-hours of the configuration's trials; grey rows are the "
         "baseline.</p>" + html.table(_main_columns(summary), highlight)
         + _clip_note(summary, spec.objective.column, spec.objective.metric)),
    ]  # fmt: skip
    if runs.skipped:
        sections.append(("Skipped configurations", '<p class="note">Refused before any trial, with the '
                         "reason (never trained in their place).</p>" + _bullets(runs.skipped)))  # fmt: skip
    sections += [
        ("Other final metrics", '<p class="note">Mean ± std (ddof = 0) over the same repeats.</p>'
         + html.table(_other_metrics(summary), highlight)),
        ("Against the baseline", '<p class="note">Paired over the seeds/folds both configurations finished: '
         "paired t-test and Wilcoxon signed-rank (two-sided; with 5 pairs or fewer Wilcoxon cannot go below "
         "p = 0.0625). p_t_holm and p_wilcoxon_holm: each test's p-values Holm-adjusted (step-down) across "
         "the configurations compared.</p>" + html.table(comparison)),
        ("Departures from the seed", _departures_section(spec, runs.departures)),
    ]  # fmt: skip
    for path in method_files:
        if path.suffix == ".csv":
            sections.append((_title(path), html.table(pd.read_csv(path).fillna(""))))
    images = [path for path in [*method_files, *figures] if path.suffix == ".png"]
    sections += [(_title(path), html.image(path)) for path in images]
    return html.page(f"raysuite report: {runs.experiment}", facts, sections)


def _main_columns(summary: pd.DataFrame) -> pd.DataFrame:
    """The objective's columns; a clipped interval's ends carry :data:`CLIP_MARK`."""
    keep = ("config", *STATS, "pruned", "pruned_at", "min", "max", "gpu_hours", "cpu_hours", "cost")
    table = summary.loc[:, [c for c in keep if c in summary]]
    if "ci95_clipped" in summary and summary["ci95_clipped"].fillna(False).astype(bool).any():
        table = table.astype({"ci95_low": object, "ci95_high": object})
        for i in summary.index[summary["ci95_clipped"].fillna(False).astype(bool)]:
            for end in ("ci95_low", "ci95_high"):
                table.at[i, end] = html.number(summary.at[i, end]) + CLIP_MARK
    return table


def _clip_note(summary: pd.DataFrame, column: str, metric: str) -> str:
    """The footnote of clipped intervals (empty when none was)."""
    bounds = bounds_of(metric)
    if (
        bounds is None
        or "ci95_clipped" not in summary
        or not summary["ci95_clipped"].fillna(False).astype(bool).any()
    ):
        return ""
    low, high = bounds
    return (f'<p class="note">{CLIP_MARK} interval clipped to [{low:g}, {high:g}]: {_html.escape(column, quote=False)} '
            "is bounded, and the t-interval of the mean ran past the bound.</p>")  # fmt: skip


def _bullets(lines: list[str]) -> str:
    """``lines`` as an HTML list; Markdown ``code`` spans become ``<code>``."""
    return "<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in lines) + "</ul>"


def _inline(text: str) -> str:
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _html.escape(text, quote=False))


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` is a literal bar)."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def parse_departures(text: str) -> dict[str, Any]:
    """``departures.md`` (:func:`raysuite.methods.ledger.departures_markdown`) back to its
    parts: ``title``, ``citation``, ``table`` (the ledger: item, the seed, raysuite, why),
    ``notes`` (other lines of the ledger part, e.g. "declares no departures"), ``flags``
    (the bullet lines of "Values of this sweep that differ from the seed's design") and
    ``flags_note`` (that part's other lines, e.g. "None: ...")."""
    out: dict[str, Any] = {"title": "", "citation": "", "table": pd.DataFrame(), "notes": [],
                           "flags": [], "flags_note": []}  # fmt: skip
    rows: list[list[str]] = []
    in_flags = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("## "):
            in_flags = True
        elif line.startswith("# ") and not out["title"]:
            out["title"] = line[2:].strip()
        elif in_flags:
            if line.startswith(("- ", "* ")):
                out["flags"].append(line[2:].strip())
            else:
                out["flags_note"].append(line)
        elif line.startswith("|"):
            if not re.fullmatch(r"\|[\s:|-]*\|?", line):  # not the |---| rule
                rows.append(_cells(line))
        elif not out["citation"]:
            out["citation"] = line
        else:
            out["notes"].append(line)
    if rows:
        header, *body = rows
        out["table"] = pd.DataFrame(
            [r + [""] * (len(header) - len(r)) for r in body], columns=header
        )
    return out


def _departures_section(spec: Spec, text: str | None) -> str:
    """The parent run's ``departures.md`` as HTML: the citation, the ledger's table and the
    sweep's values that differ from the seed's design. A parent without one (a sweep older
    than the ledger) gets the same computed from ``spec`` and the method's current ledger,
    and says so."""
    source = f"From the parent run's {DEPARTURES}"
    if text is None:
        text = departures_of(spec).markdown()
        source = f"Computed from the spec and the method's ledger: the parent run carries no {DEPARTURES}"
    parts = parse_departures(text)
    body = [f'<p class="note">{_html.escape(source, quote=False)}. Every place raysuite departs from '
            "the seed (the method's ledger), then each configuration's values that differ from the "
            "seed's design.</p>"]  # fmt: skip
    if parts["citation"]:
        body.append(f"<p>{_inline(parts['citation'])}</p>")
    if not parts["table"].empty:
        body.append(html.table(parts["table"]))
    body += [f"<p>{_inline(n)}</p>" for n in parts["notes"]]
    body.append("<h3>Values of this sweep that differ from the seed's design</h3>")
    if parts["flags"]:
        body.append(_bullets(parts["flags"]))
    body += [f"<p>{_inline(n)}</p>" for n in parts["flags_note"]]
    return "\n".join(body)


def _other_metrics(summary: pd.DataFrame) -> pd.DataFrame:
    """config x metric, each cell ``mean ± std`` (empty where no trial logged it)."""
    table = pd.DataFrame({"config": summary.get("config", pd.Series(dtype=str))})
    for metric in dict.fromkeys(c.removesuffix(" mean") for c in summary if c.endswith(" mean")):
        means, stds = summary[f"{metric} mean"], summary[f"{metric} std"]
        table[metric] = [
            f"{m:.4g} ± {s:.2g}" if not math.isnan(m) else ""
            for m, s in zip(means, stds, strict=True)
        ]
    return table


def _title(path: Path) -> str:
    """``figure_5_1.csv`` -> "Figure 5.1", ``config_bars.png`` -> "Config bars"."""
    return re.sub(r"(\d)_(?=\d)", r"\1.", path.stem).replace("_", " ").capitalize()


def report_sweep(
    client: Any, spec: Spec, parent_id: str, out: Path, importances: Importances | None = None
) -> Report:
    """Fetch the sweep, write its report into ``out`` and log every file and the cost
    totals to its parent run (``importances``: :func:`write_report`)."""
    report = write_report(spec, fetch(client, spec, parent_id), out, importances)
    for path in report.files:
        track.log_file(client, parent_id, path)
    status = report.trials.status if not report.trials.empty else pd.Series(dtype=str)
    metrics = {f"cost/{k}": v for k, v in report.cost.items()}
    metrics.update(
        {f"trials/{s.lower()}": float((status == s).sum()) for s in ("FINISHED", "FAILED")}
        | {"trials/pruned": float((status == "KILLED").sum())}
    )
    track.log_metrics(client, parent_id, metrics, 0, 0)
    return report
