"""From a spec to the configurations a sweep runs (arms x grid, repeats, skipped ones) and
from a trial's point to its plan: resolved stage configs, effective seeds and stage-cache keys. Pure functions, no Ray, so the CLI, the sweep driver and the tests
share them."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raysuite.code_fingerprint import fingerprint
from raysuite.methods import METHODS, module_of
from raysuite.spec import (
    ARM,
    FOLD,
    Spec,
    SpecError,
    config_id,
    config_label,
    resolve_stage_configs,
)

# ---------------------------------------------------------------- configurations


def repeat_points(spec: Spec) -> list[dict[str, int]]:
    """All repeat seed combinations, e.g. ``{pretrain.seed: 2, finetune.seed: 2}`` -> 4 dicts."""
    axes = sorted(spec.search.repeats.items())
    if not axes:
        return [{}]
    return [dict(zip([k for k, _ in axes], combo, strict=True)) for combo in itertools.product(*[range(n) for _, n in axes])]


def all_points(spec: Spec) -> list[dict[str, Any]]:
    """Cartesian product of the arms and the grid axes (one empty point when neither)."""
    axes = list(spec.search.grid.items())
    if spec.search.arms:
        axes.insert(0, (ARM, list(spec.search.arms)))
    if not axes:
        return [{}]
    return [dict(zip([k for k, _ in axes], combo, strict=True)) for combo in itertools.product(*[v for _, v in axes])]


Unavailable = Callable[[Spec, dict[str, dict[str, Any]]], "str | None"]


def skipped_points(spec: Spec, unavailable: Unavailable | None = None) -> list[tuple[dict[str, Any], str]]:
    """Grid points that cannot run here, with the reason: the method's own
    (``Method.unavailable``) or ``unavailable``'s (the sweep driver's: pretrained weights that
    cannot be had, see :mod:`raysuite.weight_resolution`). The sweep reports them and runs
    the rest."""
    method, data = METHODS[spec.method], spec.data.model_dump()
    out = []
    for point in all_points(spec):
        configs = resolve_stage_configs(spec, point, where="search")
        reason = method.why_unavailable(data, configs) or (unavailable(spec, configs) if unavailable else None)
        if reason:
            out.append((point, reason))
    return out


def grid_points(spec: Spec, unavailable: Unavailable | None = None) -> list[dict[str, Any]]:
    """The configurations a sweep runs: arms x grid axes, less :func:`skipped_points`."""
    skipped = [point for point, _ in skipped_points(spec, unavailable)]
    return [point for point in all_points(spec) if point not in skipped]


POINT = "__point__"  # grid sweeps: the trial's serialised point (grid_trials)
REPEAT = "__trial_index__"  # set by ray.tune.search.Repeater on Optuna sweeps


@dataclass(frozen=True)
class TrialPlan:
    overrides: dict[str, Any]  # the configuration (no seeds)
    repeat: dict[str, int]  # e.g. {"pretrain.seed": 1, "finetune.seed": 0, "fold": 2}
    configs: dict[str, dict[str, Any]]  # resolved, validated stage configs
    seeds: dict[str, int]  # effective RNG seed per stage
    keys: dict[str, str]  # content key per stage (stage cache for cacheable ones)
    # <stage>.<field> -> stored directory of the pretrained weights the driver resolved
    weights: dict[str, str] = field(default_factory=dict)

    @property
    def fold(self) -> int | None:
        return self.repeat.get(FOLD)

    @property
    def config_id(self) -> str:
        return config_id(self.overrides)

    @property
    def label(self) -> str:
        return config_label(self.overrides)

    @property
    def trial_key(self) -> str:
        seeds = "-".join(f"{k}{v}" for k, v in sorted(self.repeat.items()))
        return f"{self.config_id}-{seeds or 'r0'}"


WORKER = "raysuite.tune.worker"  # the Ray Train worker: seeds, samplers, the epoch loop's caller


def code_fingerprint(method: str) -> str:
    """Fingerprint of the code computing ``method``'s stages (its module, the Train worker
    and every raysuite module they import): :mod:`raysuite.code_fingerprint`."""
    return fingerprint(module_of(method)) + fingerprint(WORKER)


def stage_world_size(spec: Spec, stage: str) -> int:
    """How many DDP workers run ``stage``: a job runs in one, training in ``workers_per_trial``."""
    return (
        1
        if METHODS[spec.method].stages[stage].job is not None
        else spec.resources.workers_per_trial
    )


def grid_trials(spec: Spec, unavailable: Unavailable | None = None) -> list[dict[str, Any]]:
    """The grid study's trials, each its serialised point (the value of :data:`POINT` in
    the trial's Tune config): ``{"overrides": configuration, "repeat": seeds}``, for every
    configuration of :func:`grid_points` x :func:`repeat_points`. A trial decodes its own
    point (:func:`decode`) without enumerating the grid, and a resumed sweep's trials keep
    theirs whatever the grid is now."""
    repeats = repeat_points(spec)
    return [{"overrides": point, "repeat": repeat} for point in grid_points(spec, unavailable) for repeat in repeats]


def decode(spec: Spec, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Tune config -> (overrides, repeat seeds): a grid trial's serialised :data:`POINT`,
    or an Optuna trial's dotted keys with its repeat (:data:`REPEAT`)."""
    if POINT in config:
        point = config[POINT]
        return dict(point["overrides"]), {k: int(v) for k, v in point["repeat"].items()}
    overrides = {k: v for k, v in config.items() if "." in k}
    repeats = repeat_points(spec)
    if REPEAT in config:
        return overrides, repeats[int(config[REPEAT]) % len(repeats)]
    return overrides, repeats[0]


def plan(
    spec: Spec,
    overrides: dict[str, Any],
    repeat: dict[str, int],
    weights: dict[str, str] | None = None,
    hash_data: bool = True,
) -> TrialPlan:
    """Resolve a trial. Seeds: a stage's seed mixes its own and those of the stages it
    consumes, so the scratch arm still gets distinct runs per (pretrain seed, finetune
    seed) pair while all configurations share the same seed set (as seed 001 did across
    intervals). A stage's key covers its config, data, seed, fold and the keys of the
    stages it consumes (not of stages it merely follows), so two independent models of
    one trial are cached independently. The key also covers the code computing the stage
    (:func:`code_fingerprint`) and its world size. ``weights``: the stored pretrained files
    of this configuration (``weight_resolution.Resolution.for_trial``); the key covers the
    value naming them (``imagenet`` is one pinned library file). ``hash_data`` False leaves
    the data out of the keys (``raysuite plan`` before the data is ingested: the keys are
    then provisional, good for telling which trials share a stage, not for the cache)."""
    method = METHODS[spec.method]
    configs = resolve_stage_configs(spec, {**overrides, **repeat}, where="search")
    for key, message in method.problems(configs):
        raise SpecError(None, key, message)
    seeds: dict[str, int] = {}
    keys: dict[str, str] = {}
    live: dict[str, str] = {}  # key of each stage that runs (skipped stages output nothing)
    fold = repeat.get(FOLD)
    for name, stage in method.stages.items():
        upstream_seed = 0
        for consumed in stage.inputs:
            upstream_seed = upstream_seed * 1009 + seeds[consumed]
        seed = upstream_seed * 1009 + int(configs[name].get("seed", 0))
        seeds[name] = seed
        content = {
            "method": spec.method,
            "stage": name,
            "config": configs[name],
            "manifest": method.manifest_hash(
                spec.data.model_dump(), name, stage.config.model_validate(configs[name])
            )
            if hash_data
            else None,
            "seed": seed,
            "upstream": "+".join(live.get(c, "") for c in stage.inputs),
            "code": code_fingerprint(spec.method),
            # DDP changes what a stage computes (BatchNorm statistics, data shards): the world
            # size is in the key beside the global batch (a config field, like every other)
            "world_size": stage_world_size(spec, name),
        }
        if fold is not None and stage.per_fold:
            content["fold"] = fold
        keys[name] = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]
        if not stage.skips(configs[name]):
            live[name] = keys[name]
    return TrialPlan(overrides, repeat, configs, seeds, keys, dict(weights or {}))
