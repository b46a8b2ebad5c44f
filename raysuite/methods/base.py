"""The method contract: a method is a small DAG of stages, each with a pydantic config
(typed defaults from its seed) and a recipe builder for the shared epoch loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from raysuite.methods.ledger import Departure, Paper
from raysuite.methods.nn import pretrained
from raysuite.methods.nn.pretrained import Need
from raysuite.train.loop import Recipe
from raysuite.train.telemetry import DATA_WAIT, EPOCH_TIME, GPU_MEM, SAMPLES_PER_S

if TYPE_CHECKING:
    from raysuite.methods.knobs import PosthocSearch

# what the epoch loop (train.loop.fit) reports of every training stage, as <stage>/<key>
LOOP_KEYS = ("loss", "epoch", "lr", EPOCH_TIME, SAMPLES_PER_S, DATA_WAIT, GPU_MEM)


class StageConfig(BaseModel):
    """Base of every stage config: strict (typos are errors) and carrying the RNG seed."""

    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0, description="RNG seed of this stage (search.repeats varies it for repeats)")


class OptimConfig(StageConfig):
    """Base of every training stage's config: what the epoch loop and the Train worker read of
    any training stage. A method's config redeclares a field to give its seed's default and
    bounds; a stage with a ``recipe`` must have an OptimConfig (``Method`` refuses others)."""

    epochs: int = Field(1, ge=1, description="passes over the training set")
    batch_size: int = Field(
        2, ge=1, description="global batch of one optimiser step over every DDP worker (what the seeds report)"
    )
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    num_workers: int = Field(2, ge=0, description="DataLoader processes per training worker")
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on the CPU)")


C = TypeVar("C", bound=StageConfig)


@dataclass(frozen=True)
class StageInputs(Generic[C]):
    """What a stage's recipe builder or job receives: ``StageInputs[PretrainConfig]`` types
    ``cfg`` as that stage's validated config."""

    cfg: C  # the stage's validated StageConfig subclass
    data: dict[str, Any]  # the spec's data section (format, root, cache_dir)
    upstream: Path | None  # local directory of the consumed stage's checkpoint, if any
    seed: int  # effective RNG seed of this run
    rank: int = 0
    world_size: int = 1
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # every stage's config of this trial
    upstreams: dict[str, Path] = field(default_factory=dict)  # every consumed (not skipped) stage's output
    fold: int | None = None  # cross-validation fold of this trial (search.repeats.fold)
    # this stage's pretrained files resolved by the sweep driver, by field name (``weights``)
    pretrained: dict[str, Path] = field(default_factory=dict)
    # a job's searcher of inference-time knobs on saved predictions (grid or Optuna), given
    # by the sweep's trial (tune/); None outside a sweep: methods.knobs.search_posthoc then
    posthoc_search: PosthocSearch | None = None

    def weights_file(self, name: str, arch: str) -> Path | None:
        """The local file of this stage's pretrained-weights field ``name`` (a file the
        sweep driver resolved into shared storage), None for ``none``. Outside a sweep (tests,
        ``LocalRuntime``) the field resolves on this machine: a path, or a name found in
        torchvision's or timm's cache (never downloaded here: :mod:`~raysuite.methods.nn.pretrained`)."""
        if name in self.pretrained:
            return self.pretrained[name]
        return pretrained.local_file(arch, getattr(self.cfg, name))

    def local_batch(self, batch_size: int, minimum: int = 1) -> int:
        """This rank's share of the global ``batch_size``: a stage's ``batch_size`` is always
        the batch of one optimiser step over every DDP worker (the number the seeds report),
        so each of ``world_size`` training loaders draws ``batch_size / world_size``. A batch
        that does not split evenly, or leaves a rank fewer than ``minimum`` samples (e.g. 2
        for BatchNorm or a contrastive loss), is refused (``spec.check_stages`` refuses the
        first before any trial)."""
        stage = type(self.cfg).__name__
        if batch_size % self.world_size:
            raise ValueError(
                f"{stage}: batch_size {batch_size} (global) does not split over {self.world_size} DDP workers; "
                f"use a multiple of {self.world_size}"
            )
        local = batch_size // self.world_size
        if local < minimum:
            raise ValueError(
                f"{stage}: batch_size {batch_size} (global) leaves {local} per DDP worker over {self.world_size} "
                f"workers, fewer than {minimum}; use at least {minimum * self.world_size}"
            )
        return local


class StageConfigs(Mapping[str, StageConfig]):
    """One configuration's validated stage configs by stage name, as ``check``, ``check_data``
    and ``unavailable`` receive them: ``configs.of("pretrain", PretrainConfig)`` gives that
    stage's config typed as its model (a TypeError if the stage has another model)."""

    def __init__(self, configs: Mapping[str, StageConfig]) -> None:
        self._configs = dict(configs)

    def __getitem__(self, stage: str) -> StageConfig:
        return self._configs[stage]

    def __iter__(self) -> Iterator[str]:
        return iter(self._configs)

    def __len__(self) -> int:
        return len(self._configs)

    def of(self, stage: str, model: type[C]) -> C:
        cfg = self._configs[stage]
        if not isinstance(cfg, model):
            raise TypeError(f"stage {stage!r} has a {type(cfg).__name__}, not a {model.__name__}")
        return cfg


# A job stage's work: (inputs, output directory) -> metrics. What it writes to the
# directory is the stage's output; metrics whose key starts with ARTIFACT carry the text of
# an artifact for the trial's run (e.g. a table of every post-hoc combination tried).
Job = Callable[[StageInputs, Path], dict[str, Any]]
ARTIFACT = "artifact/"


@dataclass(frozen=True)
class StageDef(Generic[C]):
    """A stage trains (``recipe``: the epoch loop in DDP workers) or runs a ``job``: in one
    Ray Train worker (``job_on="worker"``, e.g. inference on the GPU) or in the trial's
    driver (``job_on="driver"``, e.g. a threshold search on saved predictions). ``config``
    types the rest: ``recipe`` receives ``StageInputs[C]``, ``skip`` a ``C``."""

    name: str
    config: type[C]
    recipe: Callable[[StageInputs[C]], Recipe] | None = None
    consumes: str | tuple[str, ...] | None = None  # stage(s) whose output this one loads
    cacheable: bool = False  # output stored in the stage cache under a content hash
    per_fold: bool = True  # False: the fold is not in its key (a pretraining shared by every fold)
    skip: Callable[[C], bool] = lambda cfg: False  # e.g. "no pretraining" arm
    job: Job | None = None
    job_on: Literal["worker", "driver"] = "worker"

    def validated(self, cfg: Mapping[str, Any] | StageConfig) -> C:
        """``cfg`` as this stage's model (a plan's JSON-ready dict is validated)."""
        return cfg if isinstance(cfg, self.config) else self.config.model_validate(cfg)

    def skips(self, cfg: Mapping[str, Any] | StageConfig) -> bool:
        """Whether a configuration leaves this stage out (:attr:`skip` on its typed config)."""
        return self.skip(self.validated(cfg))

    @property
    def inputs(self) -> tuple[str, ...]:
        if self.consumes is None:
            return ()
        return (self.consumes,) if isinstance(self.consumes, str) else self.consumes


@dataclass(frozen=True)
class Method:
    name: str
    seed: str  # seed paper file in shared/seeds ("" for a method of your own: see description)
    data_format: str  # a data format, or "sources" (spec.SOURCES) for several named datasets
    stages: dict[str, StageDef[Any]]
    monitor: str  # headline metric, e.g. "val/dice"
    tiny: dict[str, dict[str, Any]] = field(default_factory=dict)
    smoke: dict[str, dict[str, Any]] = field(default_factory=dict)
    smoke_cases: int = 6
    # (typed stage configs of a configuration) -> problems as (<stage>.<field>, message)
    check: Callable[[StageConfigs], list[tuple[str, str]]] = lambda configs: []
    # (spec data section, stage configs) -> problems, for checks that need the data (source names)
    check_data: Callable[[dict[str, Any], StageConfigs], list[tuple[str, str]]] = lambda data, configs: []
    # (data, stage configs) -> why this configuration cannot run here (its grid point is
    # skipped with that message), or None
    unavailable: Callable[[dict[str, Any], StageConfigs], str | None] = lambda data, configs: None
    # <stage>.<field> values of the arm the seed reports against (no pretraining, scratch,
    # the prior method): the report's paired comparisons use it unless search.baseline says
    baseline: dict[str, Any] = field(default_factory=dict)
    prepare_data: Callable[[dict[str, Any]], None] = lambda data: None
    manifest_hash: Callable[[dict[str, Any], str, Any], str] = lambda data, stage, cfg: ""
    # sweep-level plots: (finished trials with param.* columns, output dir, metric) -> files
    report: Callable[[Any, Path, str], list[Path]] = lambda trials, out, metric: []
    default_folds: int | None = None  # K of its K-fold split when the method cross-validates
    progress_stage: str | None = None  # whose epochs ASHA counts; default the last stage
    # per stage, the metric keys it reports besides the loop's own (LOOP_KEYS): its
    # epoch_end extras as <stage>/<key>, its evaluation's and test's scores, <metric>_best
    # of the metric its recipe monitors, a job's metrics (artifacts aside). A spec's
    # objective must be one of metric_keys() (tests/test_method_metrics.py holds them true)
    metrics: dict[str, tuple[str, ...]] = field(default_factory=dict)
    paper: Paper | None = None  # the seed as it names itself
    departures: tuple[Departure, ...] = ()  # every place the method departs from its seed
    # (stage configs of a configuration) -> the seed's value of each <stage>.<field> key it
    # gives one for, so a sweep's values that differ are flagged (ledger.design_flags)
    seed_design: Callable[[dict[str, dict[str, Any]]], dict[str, Any]] = lambda configs: {}
    # (stage configs) -> the fields that start a model from pretrained weights, with the
    # architecture each file must fit; the sweep driver resolves them before any trial
    pretrained: Callable[[dict[str, dict[str, Any]]], list[Need]] = lambda configs: []
    # declared seconds per epoch of each training stage on one GPU at the seed's scale
    # (``raysuite plan``'s device-hour estimate); a job stage may declare its total seconds
    epoch_seconds: dict[str, float] = field(default_factory=dict)
    description: str = ""  # one line for ``raysuite methods`` (a method with no seed paper)
    # inference-time knobs its post-hoc job searches on saved predictions: knob -> meaning
    # (``raysuite methods NAME`` lists them; the search itself: methods.knobs)
    posthoc_knobs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, stage in self.stages.items():
            if stage.recipe is not None and not issubclass(stage.config, OptimConfig):
                raise TypeError(f"{self.name}: training stage {name!r} has config {stage.config.__name__}, "
                                "which must subclass raysuite.methods.base.OptimConfig")  # fmt: skip
            if (stage.recipe is None) == (stage.job is None):
                raise TypeError(f"{self.name}: stage {name!r} needs exactly one of recipe and job")

    def typed(self, configs: Mapping[str, Mapping[str, Any] | StageConfig]) -> StageConfigs:
        """A configuration's stage configs (a plan's JSON-ready dicts) validated per stage."""
        return StageConfigs({name: self.stages[name].validated(cfg) for name, cfg in configs.items()})

    def problems(
        self, configs: Mapping[str, Mapping[str, Any] | StageConfig], data: dict[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        """:attr:`check`'s problems of a configuration, and :attr:`check_data`'s given ``data``."""
        typed = self.typed(configs)
        return self.check(typed) + (self.check_data(data, typed) if data is not None else [])

    def why_unavailable(self, data: dict[str, Any], configs: Mapping[str, Mapping[str, Any] | StageConfig]) -> str | None:
        """:attr:`unavailable` on a configuration's typed configs."""
        return self.unavailable(data, self.typed(configs))

    def schedule_stage(self) -> str:
        return self.progress_stage or list(self.stages)[-1]

    def metric_keys(self) -> tuple[str, ...]:
        """Every metric key a trial of this method reports: each training stage's loop keys
        (``<stage>/loss``, ``<stage>/epoch`` ...) and each stage's :attr:`metrics`."""
        keys = [f"{name}/{key}" for name, d in self.stages.items() if d.recipe is not None for key in LOOP_KEYS]
        keys += [key for name in self.stages for key in self.metrics.get(name, ())]
        return tuple(dict.fromkeys(keys))

    def tiny_inputs(
        self,
        stage: str,
        data: dict[str, Any],
        overrides: dict[str, dict[str, Any]] | None = None,
        upstreams: dict[str, Path] | None = None,
        fold: int | None = 0,
    ) -> StageInputs:
        """``stage``'s inputs from the TINY preset with per-stage ``overrides``, to run a
        recipe or job in this process (tests; debugging with ``LocalRuntime``)."""
        overrides, upstreams = overrides or {}, upstreams or {}
        configs = {
            name: d.config.model_validate({**self.tiny.get(name, {}), **overrides.get(name, {})})
            for name, d in self.stages.items()
        }
        dumped = {name: c.model_dump(mode="json") for name, c in configs.items()}
        single = next(iter(upstreams.values())) if len(upstreams) == 1 else None
        return StageInputs(configs[stage], data, single, 0, stages=dumped, upstreams=upstreams, fold=fold)
