"""Sweep spec: strict pydantic models, YAML loading (:mod:`raysuite.spec_yaml`: duplicate
keys and alias bombs refused, ``${VAR:-default}`` expanded in values), ``--set`` overrides,
dotted-path checks against the method's stage configs (:mod:`raysuite.spec_stage_checks`,
:mod:`raysuite.spec_checks`). The configurations a sweep runs are enumerated by
:mod:`raysuite.plan`.

Every error is a :class:`SpecError` naming the file and the key path, raised before any
Ray process starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from raysuite.methods import METHODS, entry_points
from raysuite.spec_errors import SpecError, did_you_mean, validation_error
from raysuite.spec_numbers import bool_for_number, loc_text
from raysuite.spec_yaml import expand_tree, load_yaml

DATA_FORMATS = ("vindr_cxr", "siim_acr", "chestxray14", "flare22", "luna16", "mura")
SOURCE_FORMATS = DATA_FORMATS + ("folder",)  # data.sources may also name plain folders of images
SOURCES = "sources"  # Method.data_format of a method reading data.sources


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class SplitSpec(Strict):
    """Patient-level split written into the manifest at ingest (seeds 000/003: 70/10/20;
    seed 002: 5-fold cross-validation)."""

    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    folds: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitSpec:
        if abs(sum(self.ratios) - 1) > 1e-6 or min(self.ratios) < 0:
            raise ValueError(f"ratios {list(self.ratios)} must be non-negative and sum to 1")
        return self


class SourceSpec(Strict):
    """One dataset of a multi-source method (seed 002's pretraining pool and its transfer
    tasks): where it is and, for plain folders, what it holds."""

    format: Literal[SOURCE_FORMATS]  # type: ignore[valid-type]
    root: str
    manifest: str | None = None
    split: SplitSpec = SplitSpec()
    synthetic_if_missing: bool = False
    synthetic_cases: int | None = Field(default=None, ge=2)
    modality: str | None = None  # CT, MR, CR, DX, MG …: overrides the manifest's (folders of NIfTI/PNG have none)
    body_part: str | None = None


class DataSpec(Strict):
    """One dataset (``format``, ``root`` …) or, for methods reading several, named
    ``sources``; ``cache_dir`` is shared."""

    format: Literal[DATA_FORMATS] | None = None  # type: ignore[valid-type]
    root: str | None = None
    manifest: str | None = None  # default: <cache_dir>/manifests/<format>-<hash of root>.parquet
    split: SplitSpec = SplitSpec()
    synthetic_if_missing: bool = False
    synthetic_cases: int | None = Field(default=None, ge=2)
    cache_dir: str | None = None
    sources: dict[str, SourceSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> DataSpec:
        if self.sources and (self.format or self.root):
            raise ValueError("give either format and root, or sources, not both")
        if not self.sources and not (self.format and self.root):
            raise ValueError("needs format and root (or sources, for methods reading several datasets)")
        return self


class Uniform(Strict):
    uniform: tuple[float, float]


class LogUniform(Strict):
    loguniform: tuple[float, float]


class IntRange(Strict):
    randint: tuple[int, int]


class Choice(Strict):
    choice: list[Any] = Field(min_length=1)


def _distribution_kind(value: Any) -> str:
    """The key naming a distribution (``{uniform: [0, 1]}`` -> ``uniform``); "" when a
    mapping holds no single key."""
    if isinstance(value, BaseModel):
        return next(iter(type(value).model_fields))
    return next(iter(value)) if isinstance(value, dict) and len(value) == 1 else ""


Distribution = Annotated[
    Annotated[Uniform, Tag("uniform")]
    | Annotated[LogUniform, Tag("loguniform")]
    | Annotated[IntRange, Tag("randint")]
    | Annotated[Choice, Tag("choice")],
    Discriminator(_distribution_kind),
]


class OptunaSpec(Strict):
    n_trials: int = Field(ge=1)
    space: dict[str, Distribution]
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _ranges(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        for key, dist in space.items():
            bounds = getattr(dist, "uniform", None) or getattr(dist, "loguniform", None)
            bounds = bounds or getattr(dist, "randint", None)
            if bounds is not None and bounds[0] >= bounds[1]:
                raise ValueError(f"{key}: lower bound {bounds[0]} must be below {bounds[1]}")
            if isinstance(dist, LogUniform) and dist.loguniform[0] <= 0:
                raise ValueError(f"{key}: loguniform needs positive bounds")
        return space


class AshaSpec(Strict):
    """Rungs count epochs of the method's progress stage (its last training stage)."""

    grace_period: int = Field(default=1, ge=1)
    max_t: int = Field(default=100, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1)


class SchedulerSpec(Strict):
    asha: AshaSpec | None = None


class SearchSpec(Strict):
    """``arms``: named configurations, each a mapping of dotted keys (e.g. a method and its
    baseline differ in several settings at once), crossed with the ``grid`` axes.
    ``repeats``: ``<stage>.seed`` counts, and ``fold``: how many cross-validation folds to
    run (folds 0..n-1 of the method's K-fold split, ``data.split.folds`` or its default)."""

    arms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    repeats: dict[str, int] = Field(default_factory=dict)
    optuna: OptunaSpec | None = None
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    # what `raysuite report` compares every configuration against: an arm's name, or
    # <stage>.<field> values marking the baseline configuration(s); default: the method's
    baseline: str | dict[str, Any] | None = None
    # a sweep starting more trials (spec_checks.trial_count) is refused unless this is raised
    max_trials: int = Field(default=10_000, ge=1)

    @field_validator("repeats")
    @classmethod
    def _positive(cls, repeats: dict[str, int]) -> dict[str, int]:
        for key, count in repeats.items():
            if count < 1:
                raise ValueError(f"{key}: repeat count must be at least 1")
        return repeats


class Objective(Strict):
    metric: str
    mode: Literal["max", "min"] = "max"
    scope: Literal["best", "last"] = "best"

    @property
    def column(self) -> str:
        """The reported metric Tune optimises and summaries use: the metric itself with
        ``scope: last``, its running best (``<metric>_best``) with ``scope: best``."""
        return self.metric + ("_best" if self.scope == "best" else "")


class Resources(Strict):
    workers_per_trial: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0, ge=0)
    cpus_per_worker: float = Field(default=1, gt=0)
    max_concurrent_trials: int = Field(default=1, ge=1)
    max_failures: int = Field(default=2, ge=0)
    # a trial computing a shared stage renews its claim; a claim not renewed for this long
    # (its trial was killed, lost its node) passes to one of the trials waiting for the stage
    stage_lease_s: float = Field(default=180, gt=0)
    # turns the report's GPU- and CPU-hours (wall time x reserved devices) into money
    price_per_gpu_hour: float | None = Field(default=None, ge=0)
    price_per_cpu_hour: float | None = Field(default=None, ge=0)
    currency: str = "USD"


class Faults(Strict):
    """Recovery drill: the stage's training raises once after this epoch (then resumes
    from its checkpoint). Used by the tests; harmless to leave out."""

    stage: str
    fail_once_at_epoch: int | None = Field(default=None, ge=1)
    diverge_at_epoch: int | None = Field(default=None, ge=1)  # the loss turns NaN from this epoch on
    only_seed: int | None = None  # only trials whose stage seed is this one


class Spec(Strict):
    name: str = Field(min_length=1)
    method: str
    data: DataSpec
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search: SearchSpec = Field(default_factory=SearchSpec)
    objective: Objective
    resources: Resources = Field(default_factory=Resources)
    storage: str | None = None
    tiny: bool = False
    faults: Faults | None = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if ":" in method:
            try:
                METHODS[method]
            except KeyError as err:
                cause = err.__cause__
                why = f"{type(cause).__name__}: {cause}" if cause else "it names no raysuite Method"
                raise ValueError(f"method {method!r} (module:ATTR) cannot be loaded: {why}") from None
        elif method not in METHODS:
            if method in entry_points():  # registered by a package, but it does not load: say why
                try:
                    METHODS[method]
                except KeyError as err:
                    raise ValueError(str(err)) from None
            raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}{did_you_mean(method, METHODS)}")
        return method


def parse_spec(raw: dict[str, Any], path: str | os.PathLike | None = None) -> Spec:
    """Validate a parsed YAML mapping into a :class:`Spec`, then check every dotted path."""
    if not isinstance(raw, dict):
        raise SpecError(path, "", "a sweep spec must be a YAML mapping")
    refuse_bool_numbers(Spec, raw, path)
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as err:
        raise validation_error(err, Spec, path) from None
    from raysuite.spec_stage_checks import check_stages  # it enumerates the grid (raysuite.plan)

    check_stages(spec, path)
    _absolute_paths(spec)
    return spec


def _absolute_paths(spec: Spec) -> None:
    """Trials run in other working directories: pin relative paths to this one."""
    owners = [(spec.data, "root"), (spec.data, "manifest"), (spec.data, "cache_dir"), (spec, "storage")]
    owners += [(source, attr) for source in spec.data.sources.values() for attr in ("root", "manifest")]
    for owner, attr in owners:
        value = getattr(owner, attr)
        if value and "://" not in value:
            setattr(owner, attr, os.path.abspath(os.path.expanduser(value)))


def refuse_bool_numbers(model: type[BaseModel], raw: Any, path: Any, prefix: str = "") -> None:
    """A YAML ``true``/``false`` where ``model`` wants a number is refused (pydantic would
    take it as 1 or 0)."""
    loc = bool_for_number(model, raw)
    if loc is not None:
        key = ".".join(p for p in (prefix, loc_text(loc)) if p)
        raise SpecError(path, key, "a boolean (true/false) where a number is expected")


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> Spec:
    """Read a spec file; ``overrides`` are ``--set`` items (:func:`apply_override`). The
    ``${VAR}`` in its string values (``--set`` ones included) are expanded after parsing."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(path, "", f"cannot read: {err.strerror}") from None
    raw = load_yaml(text, path)
    if not isinstance(raw, dict):
        raise SpecError(path, "", "a sweep spec must be a YAML mapping")
    for item in overrides or []:
        apply_override(raw, item, path)
    return parse_spec(expand_tree(raw, path), path)


# search sections keyed by "<stage>.<field>": a --set key names one of their keys whole
STAGE_KEYED = (("search", "grid"), ("search", "repeats"), ("search", "optuna", "space"), ("search", "baseline"))


def override_path(raw: dict[str, Any], key: str) -> list[str]:
    """The key path a ``--set`` key names in the raw spec: ``<stage>.<field>`` is short for
    ``stages.<stage>.<field>`` (a stage of the spec's method, not a top-level key), and the
    rest of a key under a section keyed by ``<stage>.<field>`` (``search.grid``,
    ``search.repeats``, ``search.optuna.space``, ``search.baseline``, ``search.arms.<arm>``)
    is one key: ``search.grid.pretrain.lr`` -> ``[search, grid, pretrain.lr]``."""
    parts = key.split(".")
    name = raw.get("method")
    method = METHODS.get(name) if isinstance(name, str) else None
    if parts[0] not in Spec.model_fields and method is not None and parts[0] in method.stages:
        parts = ["stages", *parts]
    heads = [list(h) for h in STAGE_KEYED] + ([parts[:3]] if parts[:2] == ["search", "arms"] else [])
    head = next((h for h in heads if parts[: len(h)] == h and len(parts) > len(h)), None)
    return parts if head is None else [*head, ".".join(parts[len(head) :])]


def apply_override(raw: dict[str, Any], item: str, path: Any = None) -> None:
    """Apply one ``--set key=value`` item (the value parsed as YAML) to the raw spec."""
    key, sep, text = item.partition("=")
    where = f"--set {item}"
    if not sep or not key:
        raise SpecError(path, where, "expects key=value")
    value = load_yaml(text, path, where)
    parts = override_path(raw, key)
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(path, where, f"{part!r} is not a mapping")
    node[parts[-1]] = value


def set_dotted(tree: dict[str, Any], key: str, value: Any, path: Any = None) -> None:
    """Set the dotted ``key`` (nested mappings) of ``tree`` to ``value``."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(path, key, f"{part!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def resolve_stage_configs(
    spec: Spec,
    overrides: dict[str, Any],
    path: Any = None,
    where: str = "stages",
    base: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Stage configs after applying dotted ``overrides``; each validated by its pydantic model.

    Returns plain dicts (JSON-ready) keyed by stage name, including defaults.
    """
    method = METHODS[spec.method]
    raw = copy.deepcopy(base) if base is not None else copy.deepcopy(spec.stages)
    if spec.tiny and base is None:
        for stage, tiny in method.tiny.items():
            raw[stage] = {**tiny, **raw.get(stage, {})}
    for key, value in expand_arm(spec, overrides).items():
        stage, _, field = key.partition(".")
        raw.setdefault(stage, {})
        set_dotted(raw[stage], field, value, path)
    resolved: dict[str, dict[str, Any]] = {}
    for stage, stage_def in method.stages.items():
        # "stages.<stage>.<field>" and "search.arms.<arm>.<stage>.<field>"; a grid axis
        # ("search.grid.<stage>.<field>[i]") already names its stage and field
        prefix = where if where.endswith("]") else ".".join(p for p in (where, stage) if p)
        refuse_bool_numbers(stage_def.config, raw.get(stage, {}), path, prefix)
        try:
            cfg = stage_def.config.model_validate(raw.get(stage, {}))
        except ValidationError as err:
            raise validation_error(err, stage_def.config, path, prefix) from None
        resolved[stage] = cfg.model_dump(mode="json", exclude_none=False)
    return resolved


# ---------------------------------------------------------------- configurations


ARM = "arm"  # overrides key naming one of search.arms
FOLD = "fold"  # repeats key: cross-validation fold


def expand_arm(spec: Spec, overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted stage overrides: the named arm's settings, then the other keys (the fold,
    which is no stage setting, dropped)."""
    out = dict(spec.search.arms[overrides[ARM]]) if ARM in overrides else {}
    out.update({k: v for k, v in overrides.items() if k not in (ARM, FOLD)})
    return out


def fold_count(spec: Spec) -> int | None:
    """K of the method's K-fold split: ``data.split.folds`` or the method's default (None:
    the method does not cross-validate)."""
    default = METHODS[spec.method].default_folds
    return None if default is None else spec.data.split.folds or default


def config_id(overrides: dict[str, Any]) -> str:
    """Stable short id of a configuration (its overrides, seeds excluded)."""
    blob = json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def config_label(overrides: dict[str, Any]) -> str:
    """``arm, key=value, ...`` (the arm's name first when there is one)."""
    if not overrides:
        return "default"

    def show(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)

    arm = [str(overrides[ARM])] if ARM in overrides else []
    return ", ".join(arm + [f"{k}={show(v)}" for k, v in sorted(overrides.items()) if k != ARM])


def smoke(spec: Spec) -> Spec:
    """Shrink a spec so it runs in minutes on a 2-core CPU: TINY preset, method smoke
    overrides, one worker, at most 2 grid values per axis kept whole (the design stays),
    repeats capped at 2 per axis, Optuna trials capped at 2, ASHA rescaled."""
    method = METHODS[spec.method]
    data = spec.model_copy(deep=True)
    data.tiny = True
    preset: set[str] = set()
    for stage in method.stages:  # sizes of the TINY preset and smoke epochs win over the spec's
        data.stages[stage] = {**data.stages.get(stage, {}), **method.tiny.get(stage, {}), **method.smoke.get(stage, {})}
        preset |= {f"{stage}.{key}" for key in method.smoke.get(stage, {})}
    # smoke lengths also win over an arm's (seed 002 gives each Figure 5.1 cell its own
    # epochs); what the arms compare (encoder, init, task) stays theirs
    for arm, values in data.search.arms.items():
        data.search.arms[arm] = {k: v for k, v in values.items() if k not in preset} or values
    data.search.repeats = {k: min(v, 2) for k, v in data.search.repeats.items()}
    if data.search.optuna:
        data.search.optuna.n_trials = min(data.search.optuna.n_trials, 2)
    if data.search.scheduler.asha:  # rungs 1, 3, 9 ... up to the smoke length of the progress stage
        stage = method.schedule_stage()
        data.search.scheduler.asha.max_t = resolve_stage_configs(data, {})[stage]["epochs"]
        data.search.scheduler.asha.grace_period = 1
    data.resources.gpus_per_worker = 0
    # Smoke never touches real data: a small synthetic copy of the format sits beside it.
    for source in [data.data, *data.data.sources.values()]:
        if source.root:
            source.root = f"{source.root.rstrip('/')}-smoke-synthetic"
        source.manifest = None
        source.synthetic_if_missing = True
        source.synthetic_cases = method.smoke_cases
    data.resources.workers_per_trial = min(data.resources.workers_per_trial, 2)
    data.resources.cpus_per_worker = 1
    data.resources.max_concurrent_trials = max(1, 2 // data.resources.workers_per_trial)
    from raysuite.spec_stage_checks import check_stages

    check_stages(data)
    return data
