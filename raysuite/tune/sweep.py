"""Sweeps with Ray Tune: grid and Optuna studies, repeats, ASHA, resume, stage cache,
MLflow parent/child runs and the parent's ``summary.csv``.

Each study is one ``Tuner`` whose trainable is a *driver function* (the Train V2
pattern): it plans the trial and runs its stages as ``TorchTrainer`` s, passing metrics to
Tune with ``TuneReportCallback``.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd
import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch

from raysuite import storage, weight_resolution
from raysuite.data import privacy
from raysuite.departures import departures_of
from raysuite.methods import METHODS
from raysuite.plan import POINT, decode, grid_trials, plan, repeat_points, skipped_points
from raysuite.spec import (
    IntRange,
    LogUniform,
    Spec,
    SpecError,
    Uniform,
    config_id,
    config_label,
    resolve_stage_configs,
)
from raysuite.track import mlflow_runs as track
from raysuite.tune import capacity, stage_cache
from raysuite.tune.callbacks import (
    MlflowTrainCallback,
    MlflowTuneCallback,
    trial_params,
    trial_tags,
)
from raysuite.tune.repeat_asha import RepeatASHA
from raysuite.tune.repeat_search import RepeatSearcher
from raysuite.tune.sweep_search import STUDY, SharedStageSearcher
from raysuite.tune.telemetry import TrialStateCallback
from raysuite.tune.trial import run_trial

STATE = "sweep.json"  # <storage>/<name>/sweep.json: the parent run, its invocation and MLflow store
TRIALS = "trials"  # <storage>/<name>/trials: the sweep's Tune experiment (both studies)
DEPARTURES = "departures.md"  # the parent run's ledger of departures from the seed


@dataclass
class SweepOutcome:
    parent_run_id: str
    summary: pd.DataFrame
    stage_runs: dict[str, int]  # stage -> number of trainings this invocation ran
    trials: pd.DataFrame
    failed: bool = False


def storage_root(spec: Spec) -> str:
    return storage.root_of(spec.storage)


def init_ray(address: str | None) -> None:
    # Pretraining epochs are relayed to Tune before any fine-tuning metric exists.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if not ray.is_initialized():
        # The salt never goes through Ray: Ray logs every runtime env at INFO on every node
        # and its dashboard shows them. Workers get the *path* of the salt file (name one on
        # shared storage with RAYSUITE_SALT_FILE for a cluster), and never mint a salt of
        # their own, even when the driver's salt is the RAYSUITE_SALT variable.
        env = {"RAYSUITE_SALT_MUST_EXIST": "1", **privacy.worker_env()}
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env})


def check_capacity(spec: Spec) -> None:
    """Exit 2 (SpecError) before any trial when the cluster can never hold one trial."""
    warning = capacity.check(spec, capacity.live_offer(ray.nodes()))
    if warning:
        print(warning, flush=True)


def _driver(config: dict[str, Any], spec_json: str, storage: str, invocation: str, scope: stage_cache.Scope,
            weights: dict[str, str] | None = None) -> None:  # fmt: skip
    """One Tune trial. ``weights``: the driver's resolved pretrained files
    (``weight_resolution.Resolution.files``); a need left out of it was unavailable."""
    spec = Spec.model_validate_json(spec_json)
    overrides, repeat = decode(spec, config)
    resolution = weight_resolution.Resolution(files=dict(weights or {}))
    configs = resolve_stage_configs(spec, {**overrides, **repeat}, where="search")
    missing = [need.key for need, _ in weight_resolution.needs(spec, configs) if need.key not in resolution.for_trial(spec, configs)]
    if missing:
        raise RuntimeError(f"pretrained weights of {', '.join(missing)} were not resolved before the sweep (unavailable)")
    p = plan(spec, overrides, repeat, resolution.for_trial(spec, configs))
    # Tune retries the driver (max_failures); Train does not retry inside it, so a fault costs
    # one retry of the budget, not (Train retries + 1) x (Tune retries + 1) attempts. A
    # retried driver resumes each stage from its Train checkpoint (same run name).
    run_trial(
        spec, p, storage, f"{spec.name}-{invocation}-{config[STUDY]}-{p.trial_key}",
        callbacks=lambda: [TuneReportCallback()], relay=tune.report, coordinator=scope, train_retries=0,
    )  # fmt: skip


def configuration_of(spec: Spec, config: dict[str, Any]) -> str:
    """The configuration id of a Tune trial's config: the same for all its repeats."""
    return config_id(decode(spec, config)[0])


def _space(spec: Spec) -> dict[str, Any]:
    space = {}
    optuna = spec.search.optuna
    assert optuna is not None, "an Optuna search's space"
    for key, dist in optuna.space.items():
        if isinstance(dist, Uniform):
            space[key] = tune.uniform(*dist.uniform)
        elif isinstance(dist, LogUniform):
            space[key] = tune.loguniform(*dist.loguniform)
        elif isinstance(dist, IntRange):
            space[key] = tune.randint(dist.randint[0], dist.randint[1] + 1)  # spec bounds are inclusive
        else:
            space[key] = tune.choice(dist.choice)
    return space


def studies(spec: Spec) -> list[str]:
    out = []
    if spec.search.grid or spec.search.arms or not spec.search.optuna:
        out.append("grid")
    if spec.search.optuna:
        out.append("optuna")
    return out


def _scheduler(spec: Spec) -> RepeatASHA | None:
    """ASHA over whole configurations (:mod:`raysuite.tune.repeat_asha`). It prunes the
    search; a grid (or arms) beside an Optuna study is the baseline: its trials run whole."""
    asha = spec.search.scheduler.asha
    if asha is None:
        return None
    pruned = "optuna" if spec.search.optuna else "grid"

    def config_of(config: dict[str, Any]) -> str | None:
        return configuration_of(spec, config) if config.get(STUDY) == pruned else None

    method = METHODS[spec.method]
    return RepeatASHA(
        config_of, len(repeat_points(spec)), f"{method.schedule_stage()}/epoch",
        spec.objective.column, spec.objective.mode, asha.max_t, asha.grace_period, asha.reduction_factor,
    )  # fmt: skip


def _searcher(spec: Spec, root: str, resolution: weight_resolution.Resolution) -> SharedStageSearcher:
    """Both studies of the sweep in one searcher that starts a trial only when the shared
    stages it needs are stored or nobody is computing them (:mod:`raysuite.tune.sweep_search`)."""
    method = METHODS[spec.method]
    repeats = len(repeat_points(spec))
    grid = grid_trials(spec, resolution.reason) if "grid" in studies(spec) else []
    optuna = None
    if spec.search.optuna:
        import optuna as _optuna  # noqa: F401  (OptunaSearch needs it; the seeded sampler makes TPE reproducible)
        from optuna.samplers import TPESampler

        searcher = OptunaSearch(
            space=_space(spec), metric=spec.objective.column, mode=spec.objective.mode,
            sampler=TPESampler(seed=spec.search.optuna.seed),
        )  # fmt: skip
        optuna = RepeatSearcher(searcher, repeats, spec.search.optuna.n_trials)

    def shared_keys(config: dict[str, Any]) -> list[str]:
        overrides, repeat = decode(spec, config)
        configs = resolve_stage_configs(spec, {**overrides, **repeat}, where="search")
        p = plan(spec, overrides, repeat, resolution.for_trial(spec, configs))
        return [p.keys[name] for name, stage in method.stages.items()
                if stage.cacheable and stage.job_on != "driver" and not stage.skips(p.configs[name])]  # fmt: skip

    def stored(key: str) -> bool:
        return stage_cache.read_marker(root, key) is not None

    return SharedStageSearcher(grid, optuna, shared_keys, stored, spec.objective.column, spec.objective.mode, lookahead=repeats)


def _tuner(spec: Spec, trainable: Any, exp_dir: str, callbacks: list[tune.Callback], scheduler: RepeatASHA | None,
           searcher: SharedStageSearcher) -> tune.Tuner:  # fmt: skip
    grid = len(searcher.books.grid)
    samples = grid + (spec.search.optuna.n_trials * len(repeat_points(spec)) if spec.search.optuna else 0)
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            metric=spec.objective.column, mode=spec.objective.mode, search_alg=searcher, scheduler=scheduler,
            num_samples=samples, max_concurrent_trials=spec.resources.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=TRIALS, storage_path=exp_dir, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
        ),
    )  # fmt: skip


def _load_state(exp_dir: str) -> dict[str, Any] | None:
    data = storage.read_bytes(storage.join(exp_dir, STATE))
    return json.loads(data) if data is not None else None


def _tracking(state: dict[str, Any] | None) -> str:
    """``MLFLOW_TRACKING_URI``, else the store the sweep began with, else the default."""
    if os.environ.get("MLFLOW_TRACKING_URI") or not state:
        return track.tracking_uri()
    return state["tracking_uri"]


def run_sweep(spec: Spec, resume: bool = False, address: str | None = None) -> SweepOutcome:
    """Run (or with ``resume`` continue) every study of ``spec``; returns the summary.

    Everything the sweep needs later is under the storage: Tune's state, the stage cache,
    checkpoints, ``sweep.json`` (the parent run and the MLflow store it is in) and the
    report's files. ``--resume`` from any directory of any machine that sees the storage
    continues the same parent run."""
    method = METHODS[spec.method]
    root = storage_root(spec)
    exp_dir = storage.join(root, spec.name)
    privacy.check_salt()
    method.prepare_data(spec.data.model_dump())
    init_ray(address)
    check_capacity(spec)
    # pretrained weights: once, here, into the shared storage, before any trial
    resolution = weight_resolution.resolve(spec, root)
    state = _load_state(exp_dir) if resume else None
    if resume and state is None:
        print(f"[raysuite] --resume: no sweep state at {storage.join(exp_dir, STATE)}; starting a new sweep", flush=True)
    uri = _tracking(state)
    client = track.client(uri)
    if state is None:
        invocation = uuid.uuid4().hex[:8]
        parent = track.start_parent(
            client, spec.name, {"spec": spec.model_dump(mode="json", exclude={"name"})},
            {"mlflow.runName": f"sweep-{invocation}", "raysuite.method": spec.method, "raysuite.invocation": invocation},
        )  # fmt: skip
        state = {"parent_run_id": parent, "invocation": invocation, "tracking_uri": uri}
        storage.write_atomic(storage.join(exp_dir, STATE), json.dumps(state).encode())
        track.log_text(client, parent, "spec.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        track.log_text(client, parent, DEPARTURES, departures_of(spec).markdown())
    else:
        if not track.run_exists(client, state["parent_run_id"]):
            raise SpecError(None, "MLFLOW_TRACKING_URI", (
                f"the sweep state at {storage.join(exp_dir, STATE)} names parent run {state['parent_run_id']}, which the "
                f"MLflow store {uri} does not hold: set MLFLOW_TRACKING_URI to the store the sweep began with"))  # fmt: skip
        client.update_run(state["parent_run_id"], status="RUNNING")
    parent, invocation = state["parent_run_id"], state["invocation"]
    # The parent ends FINISHED or FAILED whatever fails (a trial, the report, Ctrl-C), and
    # with it every child still RUNNING; the cleanup retries and never raises over the cause.
    try:
        outcome = _run_studies(spec, client, parent, uri, invocation, root, exp_dir, resolution, resume)
    except BaseException:
        track.close_children(client, parent)
        track.close_run(client, parent, failed=True)
        raise
    track.close_run(client, parent, failed=outcome.failed)
    return outcome


def _run_studies(spec: Spec, client: Any, parent: str, uri: str, invocation: str, root: str, exp_dir: str,
                 resolution: weight_resolution.Resolution, resume: bool) -> SweepOutcome:  # fmt: skip
    """The sweep's one Tuner (both studies side by side), then the report."""
    skipped = [f"{config_label(point)}: {reason}" for point, reason in skipped_points(spec, resolution.reason)]
    if skipped:
        print("skipped configurations:\n  " + "\n  ".join(skipped), flush=True)
        track.log_text(client, parent, "skipped.txt", "\n".join(skipped) + "\n")
    if studies(spec) == ["grid"] and not grid_trials(spec, resolution.reason):
        raise SpecError(None, "search", f"every configuration is skipped: {skipped[0]}")
    scope, actor = stage_cache.start_coordinator(root, invocation, spec.resources.stage_lease_s)
    trainable = tune.with_parameters(
        _driver, spec_json=spec.model_dump_json(), storage=root, invocation=invocation, scope=scope,
        weights=resolution.files,
    )  # fmt: skip
    # A trial's driver only waits on its TorchTrainer: it takes no CPU a training worker could
    # use, and it lives on the head node, so a lost worker node costs Train workers (resumed
    # from their checkpoint), never the trial.
    trainable = tune.with_resources(trainable, {"CPU": 0, "memory": 1, stage_cache.HEAD: 0.001})
    path = storage.join(exp_dir, TRIALS)
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        scheduler = _scheduler(spec)
        searcher = _searcher(spec, root, resolution)
        callbacks = [MlflowTuneCallback(spec, parent, uri, "grid", scheduler, resolution), TrialStateCallback(spec.name)]
        tuner = _tuner(spec, trainable, exp_dir, callbacks, scheduler, searcher)
    grid = tuner.fit()
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if unfinished:  # Tune returns from fit on Ctrl-C, its state saved: end the parent FAILED, resumable
        raise KeyboardInterrupt(f"{unfinished} trials unfinished; continue with raysuite sweep SPEC --resume")
    track.close_children(client, parent)
    stats = cast(dict[str, Any], ray.get(actor.stats.remote(invocation)))  # the actor's stats dict
    outcome = _finish(spec, client, parent, stats, exp_dir)
    outcome.failed = any(r.error is not None for r in grid)
    return outcome


def _finish(spec: Spec, client: Any, parent: str, stats: dict[str, Any], exp_dir: str) -> SweepOutcome:
    """Stage-cache counts on the parent, then the sweep's report (summary.csv, the paired
    comparison, cost, plots, report.html: :mod:`raysuite.report.sweep_report`), written under
    the storage (``<storage>/<name>/``) as well as on the parent run."""
    stage_runs = {stage: len(keys) for stage, keys in stats["computed"].items()}
    metrics = {f"stage_cache/{s}_trainings": float(n) for s, n in stage_runs.items()}
    metrics.update({f"stage_cache/{s}_hits": float(n) for s, n in stats["hits"].items()})
    from raysuite.report.sweep_report import report_sweep  # not in every trial's driver process
    from raysuite.tune.optuna_importance import param_importances

    with tempfile.TemporaryDirectory(prefix="raysuite-report-") as tmp:
        out = storage.local_path(exp_dir) or Path(tmp)
        report = report_sweep(client, spec, parent, out, param_importances)
        if out == Path(tmp):
            storage.upload_dir(out, exp_dir)
    track.log_metrics(client, parent, metrics, 0, 0)
    track.log_text(client, parent, "stage_cache_keys.json", json.dumps(stats["computed"], indent=1))
    return SweepOutcome(parent, report.summary, stage_runs, report.trials)


def run_single(spec: Spec, address: str | None = None) -> str:
    """``raysuite train``: the first configuration and repeat, Ray Train only. Returns the run id."""
    method = METHODS[spec.method]
    storage = storage_root(spec)
    privacy.check_salt()
    method.prepare_data(spec.data.model_dump())
    init_ray(address)
    check_capacity(spec)
    overrides, repeat = decode(spec, {POINT: grid_trials(spec)[0]})
    configs = resolve_stage_configs(spec, {**overrides, **repeat}, where="search")
    resolution = weight_resolution.resolve(spec, storage)
    reason = resolution.reason(spec, configs)
    if reason:
        raise SystemExit(f"raysuite train: {config_label(overrides)}: {reason}")
    p = plan(spec, overrides, repeat, resolution.for_trial(spec, configs))
    uri = track.tracking_uri()
    client = track.client(uri)
    invocation = uuid.uuid4().hex[:8]
    run_id = track.start_parent(
        client, spec.name, trial_params(p),
        {"mlflow.runName": f"train-{invocation}", **trial_tags(p), track.ROLE: "train"},
    )  # fmt: skip
    callback = MlflowTrainCallback(run_id, uri)
    try:
        outcome = run_trial(spec, p, storage, f"{spec.name}-{invocation}-{p.trial_key}", callbacks=lambda: [callback],
                            relay=callback.log, coordinator=None, train_retries=spec.resources.max_failures)  # fmt: skip
    except BaseException:
        track.close_run(client, run_id, failed=True)
        raise
    track.close_run(client, run_id, failed=outcome == "diverged", tags=track.outcome_tags(outcome))
    return run_id
