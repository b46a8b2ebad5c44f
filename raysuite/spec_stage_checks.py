"""Checks of a parsed spec's stages against its method's models, run by
:func:`raysuite.spec.parse_spec` before any trial: stage names, the dotted keys of every
search section, repeats and folds, each arm's, grid value's and (arm x grid) point's stage
configs (the method's ``check``, ``check_data`` and weight checks), the skipped share, the
objective, the fault drill, the Optuna space, ASHA's ``max_t`` and the global batch split.
Each raises a :class:`SpecError` naming the key."""

from __future__ import annotations

from typing import Any

from raysuite import spec_checks
from raysuite.methods import METHODS
from raysuite.methods.base import Method
from raysuite.plan import all_points, skipped_points
from raysuite.spec import (
    ARM,
    FOLD,
    SOURCES,
    Choice,
    IntRange,
    Spec,
    config_label,
    fold_count,
    resolve_stage_configs,
)
from raysuite.spec_errors import SpecError, did_you_mean

Configs = dict[str, dict[str, Any]]


def check_stages(spec: Spec, path: Any = None) -> None:
    """Check stage configs, grid axes, repeats and Optuna space against the method's models,
    the sweep's size, objective and fault drill (:mod:`raysuite.spec_checks`)."""
    spec_checks.check_trial_count(spec, path)  # first: the checks below enumerate the grid
    method = METHODS[spec.method]
    _check_data_format(spec, method, path)
    for stage in spec.stages:
        if stage not in method.stages:
            raise SpecError(path, f"stages.{stage}", f"{spec.method} has no stage {stage!r}; stages: {list(method.stages)}{did_you_mean(stage, method.stages)}")
    base = resolve_stage_configs(spec, {}, path, "stages")
    _check_keys(spec, method, path)
    _check_repeats(spec, path)
    _check_configurations(spec, method, path, base)
    skipped = skipped_points(spec)
    if skipped and len(skipped) == len(all_points(spec)):
        raise SpecError(path, "search", f"every configuration is skipped: {skipped[0][1]}")
    spec_checks.check_objective(spec, path)
    spec_checks.check_faults(spec, path)
    spec_checks.check_optuna_space(spec, path, base)
    if spec.search.scheduler.asha:
        _check_asha(spec, path, base)
    _check_batch_split(spec, path, base)


def _check_data_format(spec: Spec, method: Method, path: Any) -> None:
    if method.data_format == SOURCES and not spec.data.sources:
        raise SpecError(path, "data.sources", f"{spec.method} reads several datasets: name them under data.sources")
    if method.data_format != SOURCES and spec.data.format != method.data_format:
        raise SpecError(path, "data.format", f"{spec.method} reads {method.data_format!r}, not {spec.data.format!r}")


def _check_keys(spec: Spec, method: Method, path: Any) -> None:
    """Every ``<stage>.<field>`` key of the grid, arms, repeats, Optuna space and baseline
    names a stage of the method and a field of its config."""
    keys = [("search.grid", k) for k in spec.search.grid]
    keys += [(f"search.arms.{arm}", k) for arm, values in spec.search.arms.items() for k in values]
    keys += [("search.repeats", k) for k in spec.search.repeats if k != FOLD]
    if spec.search.optuna:
        keys += [("search.optuna.space", k) for k in spec.search.optuna.space]
    baseline = spec.search.baseline
    if isinstance(baseline, str) and baseline not in spec.search.arms:
        raise SpecError(path, "search.baseline", f"{baseline!r} names no arm; arms: {list(spec.search.arms)}")
    keys += [("search.baseline", k) for k in baseline] if isinstance(baseline, dict) else []
    for section, key in keys:
        stage, _, field = key.partition(".")
        if stage not in method.stages or not field:
            raise SpecError(path, f"{section}.{key}", f"must be <stage>.<field> with a stage of {list(method.stages)}{did_you_mean(stage, method.stages)}")
        model, name = method.stages[stage].config, field.split(".")[0]
        if name not in model.model_fields:
            raise SpecError(path, f"{section}.{key}", f"{model.__name__} has no field {name!r}{did_you_mean(name, model.model_fields)}")


def _check_repeats(spec: Spec, path: Any) -> None:
    """Repeats vary a stage's seed or the fold, and no more folds than the split has."""
    for key in spec.search.repeats:
        if key != FOLD and not key.endswith(".seed"):
            raise SpecError(path, f"search.repeats.{key}", "repeats vary a stage's seed (<stage>.seed) or the fold")
    if FOLD in spec.search.repeats:
        folds = fold_count(spec)
        if folds is None:
            raise SpecError(path, "search.repeats.fold", f"{spec.method} does not cross-validate")
        if spec.search.repeats[FOLD] > folds:
            raise SpecError(path, "search.repeats.fold", f"{spec.search.repeats[FOLD]} folds asked, the split has {folds}")


def _check_configurations(spec: Spec, method: Method, path: Any, base: Configs) -> None:
    """The method's checks on the base configs, each arm's, each grid value's and, with both
    arms and a grid, each (arm x grid) point's: the first problem names where it came from."""
    data = spec.data.model_dump()

    def problems(configs: Configs) -> list[tuple[str, str]]:
        return method.problems(configs, data) + spec_checks.weights_problems(method, configs)

    for arm, values in spec.search.arms.items():
        if not values:
            raise SpecError(path, f"search.arms.{arm}", "an arm sets at least one <stage>.<field>")
        for key in values:
            if key in spec.search.grid:
                raise SpecError(path, f"search.arms.{arm}.{key}", "set by both an arm and a grid axis")
        configs = resolve_stage_configs(spec, {ARM: arm}, path, f"search.arms.{arm}", base=base)
        for field, message in problems(configs):
            raise SpecError(path, f"search.arms.{arm}", f"{field}: {message}")
    for key, message in problems(base):
        raise SpecError(path, f"stages.{key}", message)
    for key, values in spec.search.grid.items():
        if not values:
            raise SpecError(path, f"search.grid.{key}", "a grid axis needs at least one value")
        for i, value in enumerate(values):
            configs = resolve_stage_configs(spec, {key: value}, path, f"search.grid.{key}[{i}]", base=base)
            for field, message in problems(configs):
                raise SpecError(path, f"search.grid.{key}[{i}]", f"{field}: {message}")
    if spec.search.arms and spec.search.grid:  # an arm may clash with a grid value only together
        for point in all_points(spec):
            configs = resolve_stage_configs(spec, point, path, f"search.arms.{point[ARM]}", base=base)
            for field, message in problems(configs):
                raise SpecError(path, f"search.arms.{point[ARM]}", f"{field}: {message} (with {config_label(point)})")


def _check_batch_split(spec: Spec, path: Any, base: Configs) -> None:
    """A training stage's ``batch_size`` is the global batch (the seeds' number), split evenly
    over ``resources.workers_per_trial`` DDP workers (``StageInputs.local_batch``): refuse
    before any trial a base stage, arm, grid value or Optuna ``choice``/``randint`` value it
    does not divide. Job stages run in one worker and are not checked."""
    world = spec.resources.workers_per_trial
    if world == 1:
        return
    method = METHODS[spec.method]
    stages = [
        name for name, d in method.stages.items()
        if d.recipe is not None and d.job is None and "batch_size" in d.config.model_fields
    ]  # fmt: skip

    def refuse(key: str, value: Any, note: str = "") -> None:
        raise SpecError(
            path, key, f"batch_size {value}{note} is the global batch and must split evenly over "
            f"workers_per_trial={world} DDP workers; use a multiple of {world}",
        )  # fmt: skip

    optuna = spec.search.optuna.space if spec.search.optuna else {}
    for stage in stages:
        key = f"{stage}.batch_size"
        arms = spec.search.arms.values()
        overridden = key in spec.search.grid or key in optuna or (arms and all(key in values for values in arms))
        if not overridden and base[stage]["batch_size"] % world:  # the base value runs
            refuse(f"stages.{key}", base[stage]["batch_size"])
        for arm, values in spec.search.arms.items():
            if key in values:
                value = resolve_stage_configs(spec, {ARM: arm}, path, f"search.arms.{arm}", base=base)[stage]["batch_size"]
                if value % world:
                    refuse(f"search.arms.{arm}.{key}", value)
        for i, value in enumerate(spec.search.grid.get(key, [])):
            value = resolve_stage_configs(spec, {key: value}, path, f"search.grid.{key}[{i}]", base=base)[stage]["batch_size"]
            if value % world:
                refuse(f"search.grid.{key}[{i}]", value)
        dist = optuna.get(key)
        if isinstance(dist, Choice):
            for value in dist.choice:  # a value that is no int fails the stage's model in its trial
                if isinstance(value, int) and value % world:
                    refuse(f"search.optuna.space.{key}", value, " (a choice)")
        elif isinstance(dist, IntRange):
            low, high = dist.randint
            bad = next((v for v in range(low, high + 1) if v % world), None)
            if bad is not None:
                refuse(f"search.optuna.space.{key}", bad, f" (in randint [{low}, {high}]; use a choice of multiples)")


def _check_asha(spec: Spec, path: Any, base: Configs) -> None:
    """ASHA's rungs count the progress stage's epochs up to ``max_t``; a trial it does not
    prune runs every stage. A ``max_t`` below the stage's epochs is refused: with Ray's
    ASHA it stopped every surviving trial there, before the stages after it ran."""
    asha = spec.search.scheduler.asha
    assert asha is not None
    if asha.max_t < asha.grace_period:
        raise SpecError(path, "search.scheduler.asha.max_t", "must be at least grace_period")
    stage = METHODS[spec.method].schedule_stage()
    epochs = {base[stage].get("epochs")}
    epochs |= {v for k, vs in spec.search.grid.items() if k == f"{stage}.epochs" for v in vs}
    epochs |= {a[f"{stage}.epochs"] for a in spec.search.arms.values() if f"{stage}.epochs" in a}
    for n in sorted(e for e in epochs if isinstance(e, int)):
        if asha.max_t < n:
            raise SpecError(
                path, "search.scheduler.asha.max_t",
                f"{asha.max_t} is below {stage}.epochs ({n}): rungs count {stage} epochs, and a max_t short of "
                f"them would cut surviving trials before their last stage; set it to {n}",
            )  # fmt: skip
