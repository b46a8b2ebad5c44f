"""Checks of a parsed spec against its method, beside :func:`raysuite.spec_stage_checks.check_stages`:
the sweep's size, the objective metric, the Optuna space's values, the fault drill's stage
and the data roots. Each raises a :class:`SpecError` naming the key."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from raysuite.methods import METHODS
from raysuite.spec import (
    Choice,
    Distribution,
    IntRange,
    Spec,
    Uniform,
    resolve_stage_configs,
)
from raysuite.spec_errors import SpecError, did_you_mean


def trial_count(spec: Spec) -> tuple[int, str]:
    """How many trials the sweep starts, and how (counted, not enumerated): the grid study's
    configurations (arms x grid values, before skipped ones) and the Optuna study's trials,
    each times the repeats."""
    search = spec.search
    repeats = math.prod(search.repeats.values())
    studies = []
    if search.grid or search.arms or not search.optuna:
        configs = max(len(search.arms), 1) * math.prod(len(values) for values in search.grid.values())
        studies.append((configs, f"{configs} grid configurations"))
    if search.optuna:
        studies.append((search.optuna.n_trials, f"{search.optuna.n_trials} Optuna trials"))
    total = sum(n for n, _ in studies) * repeats
    how = " + ".join(text for _, text in studies)
    if repeats == 1:
        return total, how
    return total, f"({how}) x {repeats} repeats" if len(studies) > 1 else f"{how} x {repeats} repeats"


def check_trial_count(spec: Spec, path: Any) -> None:
    """Refuse a sweep of more than ``search.max_trials`` trials unless it is raised."""
    total, how = trial_count(spec)
    if total > spec.search.max_trials:
        raise SpecError(
            path, "search.max_trials",
            f"the sweep would start {total} trials ({how}), above max_trials {spec.search.max_trials}: "
            "raise search.max_trials to run them",
        )  # fmt: skip


def check_objective(spec: Spec, path: Any) -> None:
    """The objective is a metric the method reports (``Method.metric_keys``); with ``scope:
    best`` its running best (``<metric>_best``, kept for a metric a stage monitors)."""
    keys = METHODS[spec.method].metric_keys()
    metric = spec.objective.metric
    if spec.objective.column in keys:
        return
    if metric in keys:
        raise SpecError(
            path, "objective.scope",
            f"{metric} has no running best ({metric}_best): no stage of {spec.method} monitors it; use scope: last",
        )  # fmt: skip
    raise SpecError(path, "objective.metric", f"{spec.method} reports no metric {metric!r}{did_you_mean(metric, keys)}")


def check_faults(spec: Spec, path: Any) -> None:
    """The fault drill names a stage of the method."""
    stages = METHODS[spec.method].stages
    if spec.faults is not None and spec.faults.stage not in stages:
        stage = spec.faults.stage
        raise SpecError(path, "faults.stage", f"{spec.method} has no stage {stage!r}{did_you_mean(stage, stages)}")


def _probes(dist: Distribution) -> list[tuple[Any, str]]:
    """Values a distribution samples that its field must take, each with how it is sampled:
    every choice; both ends of a range; and for a float range a fractional value."""
    if isinstance(dist, Choice):
        return [(value, f"choice {value!r}") for value in dist.choice]
    if isinstance(dist, IntRange):
        low, high = dist.randint
        return [(low, f"randint [{low}, {high}] samples {low}"), (high, f"randint [{low}, {high}] samples {high}")]
    name, (low, high) = ("uniform", dist.uniform) if isinstance(dist, Uniform) else ("loguniform", dist.loguniform)
    fractional = math.nextafter(low, high)
    return [
        (low, f"{name} [{low}, {high}] samples {low}"),
        (high, f"{name} [{low}, {high}] samples up to {high}"),
        (fractional, f"{name} [{low}, {high}] samples fractional values such as {fractional!r}"),
    ]


def check_optuna_space(spec: Spec, path: Any, base: dict[str, dict[str, Any]]) -> None:
    """Every value an Optuna distribution may sample must pass its stage's config model and
    the method's checks, as a trial's would: each key's probes (:func:`_probes`) are tried
    with the other keys at their first probe (so fields that go together, like
    ``iou_min`` and ``iou_width``, are set together). A refusal names the key whose value
    the stage refused."""
    if spec.search.optuna is None:
        return
    method, data = METHODS[spec.method], spec.data.model_dump()
    space = spec.search.optuna.space
    probes = {key: _probes(dist) for key, dist in space.items()}
    reference = {key: found[0] for key, found in probes.items()}
    for key, found in probes.items():
        for value, how in found:
            point = {k: v for k, (v, _) in reference.items()} | {key: value}
            try:
                configs = resolve_stage_configs(spec, point, path, "", base=base)
            except SpecError as err:
                field, message = err.key, err.message
            else:
                problems = method.problems(configs, data)
                if not problems:
                    continue
                field, message = problems[0]
            blamed, how = (field, reference[field][1]) if field in space and field != key else (key, how)
            raise SpecError(path, f"search.optuna.space.{blamed}", f"{how}, which {field} refuses: {message}")


def check_data_present(spec: Spec, path: Any) -> None:
    """Each data root is a directory, unless the spec lets raysuite synthesise it
    (``synthetic_if_missing``) or it lives in remote storage. A named manifest need not
    exist: the first trial ingests the root into it."""
    sections = {f"data.sources.{n}": s for n, s in spec.data.sources.items()} or {"data": spec.data}
    for where, section in sections.items():
        root = section.root or ""
        if section.synthetic_if_missing or "://" in root or Path(root).is_dir():
            continue
        raise SpecError(
            path, f"{where}.root",
            f"{root} is not a directory: point it at the dataset, or set {where}.synthetic_if_missing: true to synthesise one there",
        )  # fmt: skip


def weights_problems(method: Any, configs: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """A pretrained-weights value that means nothing (a name the architecture has no
    weights under, a library source that does not exist): a mistake in the spec, refused
    before any trial. Weights that exist but are not cached here are the sweep driver's
    business (``weight_resolution``: the configuration is skipped with the reason)."""
    from raysuite.methods.ledger import lookup
    from raysuite.methods.nn import pretrained

    out = []
    for need in method.pretrained(configs):
        value = lookup(configs, need.key)
        try:
            source = pretrained.source_of(need.arch, value)
            if isinstance(source, pretrained.Source):
                pretrained.cache_path(source)  # an unknown enum or timm tag raises
        except pretrained.WeightsUnavailable as err:
            out.append((need.key, str(err)))
    return out


def check_weight_files(spec: Spec, path: Any) -> None:
    """Each pretrained-weights file a configuration names exists (``sweep``, ``train`` and
    ``plan`` check it, as they check data roots; ``validate --data`` too)."""
    from raysuite.methods.nn import pretrained
    from raysuite.weight_resolution import every_need

    for need, value in every_need(spec):
        source = pretrained.source_of(need.arch, value)
        if isinstance(source, Path) and "://" not in value and not source.is_file():
            raise SpecError(path, need.key, f"{value}: no such weights file")
