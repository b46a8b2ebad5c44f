"""``raysuite plan``: what a sweep will run, before it runs.

Every trial of the grid study (configuration label and repeat) with each stage's resolved
config, its content key and whether the sweep computes it or reuses it (the stage cache
already holds it, or an earlier trial of the same sweep computes it first); the
configurations skipped and why (the method's reasons and pretrained weights that cannot be
had); the pretrained weights each configuration starts from; totals (trials, trainings per
stage); the departures from the seed; and an estimate of device-hours from the method's
declared seconds per epoch. An Optuna study's configurations are drawn while it runs, so
the plan gives its trial count and search space only. Nothing is trained or downloaded
(``fetch`` downloads missing weights into the libraries' caches).
"""

from __future__ import annotations

import json
from typing import Any

from raysuite import weight_resolution
from raysuite.data.datasets import manifest_path
from raysuite.departures import departures_of
from raysuite.methods import METHODS
from raysuite.plan import (
    POINT,
    decode,
    grid_trials,
    plan,
    repeat_points,
    skipped_points,
    stage_world_size,
)
from raysuite.spec import Spec, config_label
from raysuite.tune import stage_cache
from raysuite.tune.sweep import storage_root, studies


def data_ingested(spec: Spec) -> bool:
    """Every manifest the sweep reads exists (the stage keys hash them)."""
    sections = list(spec.data.sources.values()) or [spec.data]
    return all(manifest_path(section.model_dump()).exists() for section in sections)


def sweep_plan(spec: Spec, fetch: bool = False) -> dict[str, Any]:
    """The plan as a JSON-ready dict: ``trials``, ``skipped``, ``weights``, ``optuna``,
    ``totals``, ``estimate``, ``departures`` (see the module doc)."""
    method = METHODS[spec.method]
    storage = storage_root(spec)
    resolution = weight_resolution.resolve(spec, None, download=fetch)
    hashed = data_ingested(spec)
    repeats = repeat_points(spec)
    seen: set[str] = set()
    trials, trainings = [], {name: 0 for name in method.stages}
    seconds = 0.0
    undeclared: set[str] = set()
    gpus = spec.resources.gpus_per_worker

    def charge(name: str, cfg: dict[str, Any], times: int = 1) -> None:
        """Count ``times`` computations of stage ``name`` and their declared device-seconds."""
        nonlocal seconds
        trainings[name] += times
        cost = _stage_seconds(method.epoch_seconds, name, cfg, method.stages[name].recipe is not None)
        if cost is None:
            undeclared.add(name)
        else:
            seconds += times * cost * stage_world_size(spec, name) * (gpus if gpus > 0 else 1)

    if "grid" in studies(spec):
        for point in grid_trials(spec, resolution.reason):
            overrides, repeat = decode(spec, {POINT: point})
            p = plan(spec, overrides, repeat, hash_data=hashed)
            stages = {}
            for name, stage in method.stages.items():
                key = p.keys[name]
                if stage.skips(p.configs[name]):
                    computes: bool | str = "skipped by its config"
                elif stage.cacheable:
                    computes = key not in seen and not (
                        hashed and stage_cache.read_marker(storage, key) is not None
                    )
                    seen.add(key)
                else:
                    computes = True
                if computes is True:
                    charge(name, p.configs[name])
                stages[name] = {
                    "config": p.configs[name],
                    "key": key if hashed else None,
                    "computes": computes,
                }
            trials.append({"config": config_label(overrides), "repeat": repeat, "stages": stages})
    skipped = [
        {"config": config_label(point), "reason": reason}
        for point, reason in skipped_points(spec, resolution.reason)
    ]
    weights = [
        {"key": need.key, "arch": need.arch, "value": value,
         "file": resolution.origin.get(weight_resolution.ref(need.arch, value)),
         "unavailable": resolution.unavailable.get(weight_resolution.ref(need.arch, value))}
        for need, value in weight_resolution.every_need(spec)
    ]  # fmt: skip
    optuna = None
    if spec.search.optuna:
        n = spec.search.optuna.n_trials * len(repeats)
        optuna = {
            "trials": n,
            "space": {k: v.model_dump() for k, v in spec.search.optuna.space.items()},
        }
        # each sampled trial costs at most what the spec's own configuration costs with every
        # stage computed (ASHA stops some early; trials may share cached stages)
        base = plan(spec, {}, repeats[0], hash_data=False)
        for name, stage in method.stages.items():
            if not stage.skips(base.configs[name]):
                charge(name, base.configs[name], n)
    departures = departures_of(spec)
    unit = "GPU-hours" if gpus > 0 else "worker-hours"
    estimate = {
        unit: None if undeclared else round(seconds / 3600, 2),
        "note": (
            "an estimate: computed stages x epochs x the method's declared seconds per epoch on one device at "
            "the seed's scale x reserved devices; not a measurement"
            + (
                "; Optuna trials counted in full (an upper bound: ASHA stops some early)"
                if spec.search.optuna
                else ""
            )
            + (
                f"; no time declared for stage(s) {', '.join(sorted(undeclared))}"
                if undeclared
                else ""
            )
        ),
    }
    return {
        "sweep": spec.name,
        "method": spec.method,
        "paper": None if method.paper is None else method.paper.cite(),
        "keys": "final"
        if hashed
        else "provisional: the data is not ingested yet, keys leave it out",
        "trials": trials,
        "skipped": skipped,
        "weights": weights,
        "optuna": optuna,
        "totals": {
            "trials": len(trials) + (optuna["trials"] if optuna else 0),
            "trainings": trainings,
        },
        "estimate": estimate,
        "departures": departures.as_json(),
    }


def _stage_seconds(
    declared: dict[str, float], stage: str, cfg: dict[str, Any], trains: bool
) -> float | None:
    """Seconds one device spends on ``stage``: epochs x declared seconds per epoch (a job
    declares its total), or None when the method declares none."""
    if stage not in declared:
        return None if trains else 0.0
    return declared[stage] * (float(cfg.get("epochs", 1) or 1) if trains else 1.0)


def render(out: dict[str, Any]) -> str:
    """The plan as text for a terminal."""
    lines = [
        f"sweep {out['sweep']} ({out['method']})" + (f": {out['paper']}" if out["paper"] else "")
    ]
    lines.append(f"stage keys: {out['keys']}")
    for trial in out["trials"]:
        repeat = ", ".join(f"{k}={v}" for k, v in trial["repeat"].items()) or "r0"
        lines.append(f"- {trial['config']} [{repeat}]")
        for name, stage in trial["stages"].items():
            state = {True: "computes", False: "reused"}.get(stage["computes"], stage["computes"])
            key = stage["key"] or "provisional"
            lines.append(
                f"    {name}: {state} (key {key}) {json.dumps(stage['config'], sort_keys=True)}"
            )
    if out["optuna"]:
        lines.append(
            f"optuna: {out['optuna']['trials']} trials over {', '.join(out['optuna']['space'])}"
        )
    for row in out["skipped"]:
        lines.append(f"skipped: {row['config']}: {row['reason']}")
    for row in out["weights"]:
        state = (
            f"unavailable: {row['unavailable']}" if row["unavailable"] else f"from {row['file']}"
        )
        lines.append(f"weights {row['key']}={row['value']} ({row['arch']}): {state}")
    totals = out["totals"]
    lines.append(f"totals: {totals['trials']} trials; trainings per stage {totals['trainings']}")
    ((unit, hours),) = [(k, v) for k, v in out["estimate"].items() if k != "note"]
    lines.append(
        f"estimate: {hours if hours is not None else 'unknown'} {unit} ({out['estimate']['note']})"
    )
    rows = out["departures"]
    lines.append(
        f"departures from the seed: {sum(r['kind'] == 'ledger' for r in rows)} in the method's ledger"
    )
    for row in rows:
        if row["kind"] == "ledger":
            lines.append(
                f"  - {row['item']}: the seed: {row['seed']}; raysuite: {row['ours']} ({row['why']})"
            )
        else:
            lines.append(f"  ! {row['config']}: {row['flag']}")
    return "\n".join(lines)
