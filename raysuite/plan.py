"""From a spec and a Tune config to a trial plan: resolved stage configs, effective seeds
and stage-cache keys. Pure functions, no Ray, so the CLI, the sweep driver and the tests
share them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from raysuite import __version__
from raysuite.methods import METHODS
from raysuite.spec import (
    Spec,
    SpecError,
    config_id,
    config_label,
    grid_points,
    repeat_points,
    resolve_stage_configs,
)

POINT = "__point__"  # grid sweeps: index into configurations x repeats
REPEAT = "__trial_index__"  # set by ray.tune.search.Repeater on Optuna sweeps


@dataclass(frozen=True)
class TrialPlan:
    overrides: dict[str, Any]  # the configuration (no seeds)
    repeat: dict[str, int]  # e.g. {"pretrain.seed": 1, "finetune.seed": 0}
    configs: dict[str, dict[str, Any]]  # resolved, validated stage configs
    seeds: dict[str, int]  # effective RNG seed per stage
    keys: dict[str, str]  # content key per stage (stage cache for cacheable ones)

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


def grid_config_count(spec: Spec) -> int:
    return len(grid_points(spec)) * len(repeat_points(spec))


def decode(spec: Spec, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Tune config -> (overrides, repeat seeds)."""
    repeats = repeat_points(spec)
    if POINT in config:
        point = int(config[POINT])
        return grid_points(spec)[point // len(repeats)], repeats[point % len(repeats)]
    overrides = {k: v for k, v in config.items() if "." in k}
    if REPEAT in config:
        return overrides, repeats[int(config[REPEAT]) % len(repeats)]
    return overrides, repeats[0]


def plan(spec: Spec, overrides: dict[str, Any], repeat: dict[str, int]) -> TrialPlan:
    """Resolve a trial. Seeds: a stage's seed mixes its own and every upstream stage's, so
    the scratch arm still gets distinct runs per (pretrain seed, finetune seed) pair while
    all configurations share the same seed set (as seed 001 did across intervals)."""
    method = METHODS[spec.method]
    configs = resolve_stage_configs(spec, {**overrides, **repeat}, where="search")
    for key, message in method.check(configs):
        raise SpecError(None, key, message)
    seeds: dict[str, int] = {}
    keys: dict[str, str] = {}
    upstream_seed, upstream_key = 0, ""
    for name, stage in method.stages.items():
        seed = upstream_seed * 1009 + int(configs[name].get("seed", 0))
        seeds[name] = seed
        blob = json.dumps(
            {
                "method": spec.method,
                "stage": name,
                "config": configs[name],
                "manifest": method.manifest_hash(spec.data.model_dump(), name, stage.config.model_validate(configs[name])),
                "seed": seed,
                "upstream": upstream_key,
                "version": __version__,
            },
            sort_keys=True,
        )
        keys[name] = hashlib.sha256(blob.encode()).hexdigest()[:24]
        upstream_seed = seed
        upstream_key = "" if stage.skip(configs[name]) else keys[name]
    return TrialPlan(overrides, repeat, configs, seeds, keys)
