"""One trial: run a method's stages in order, each as a Ray Train ``TorchTrainer``
(Train V2), reusing cacheable stages from the stage cache.

Used as the Tune trial driver (``raysuite sweep``: metrics go to Tune through
``TuneReportCallback``) and directly by ``raysuite train``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from raysuite.methods import METHODS
from raysuite.plan import TrialPlan, stage_world_size
from raysuite.spec import Spec
from raysuite.train.loop import HISTORY_FILE
from raysuite.tune import stage_cache, telemetry
from raysuite.tune.outcome import CHECKPOINTED, COMPLETE, DIVERGED, Outcome
from raysuite.tune.worker import run_job, stage_worker


class StageDiverged(Exception):
    """A stage's loss went non-finite: the trial ends FAILED (diverged), never retried."""


def run_stage(
    spec: Spec,
    plan: TrialPlan,
    stage: str,
    name: str,
    storage: str,
    upstreams: dict[str, str],
    callbacks: list[Any],
    fail_marker: str | None = None,
    train_retries: int = 0,
) -> ray.train.Result:
    """Train one stage with ``workers_per_trial`` DDP workers (a worker job: one worker).
    A rerun with the same ``name`` and ``storage`` resumes from the run's latest
    checkpoint (Train V2 restores its checkpoint manager from storage), as do worker-group
    retries within the run (``train_retries``). Raises :class:`StageDiverged` when the
    stage's loss went non-finite."""
    res = spec.resources
    use_gpu = res.gpus_per_worker > 0
    # Workers may wait for an autoscaled GPU node, or for a stopped trial's workers to be
    # released: wait up to 30 min (Ray's default is 60 s) before calling it a failure.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "1800")
    loop_config = _stage_config(spec, plan, stage, upstreams)
    loop_config["telemetry"] = {"experiment": spec.name, "trial": plan.trial_key}
    faults = spec.faults
    if faults and stage == faults.stage and faults.only_seed in (None, plan.configs[stage]["seed"]):
        if faults.fail_once_at_epoch is not None:
            loop_config.update(fail_marker=fail_marker, fail_at_epoch=faults.fail_once_at_epoch)
        if faults.diverge_at_epoch is not None:
            loop_config.update(diverge_at_epoch=faults.diverge_at_epoch, diverge_log=f"{fail_marker}.diverged")
    trainer = TorchTrainer(
        stage_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=stage_world_size(spec, stage),
            use_gpu=use_gpu,
            resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=train_retries),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    if (result.metrics or {}).get(DIVERGED):
        raise StageDiverged(f"stage {stage}: non-finite loss")
    return result


def run_trial(
    spec: Spec,
    plan: TrialPlan,
    storage: str,
    run_name: str,
    callbacks: Callable[[], list[Any]],
    relay: Callable[[dict[str, Any]], None],
    coordinator: str | None,
    train_retries: int = 0,
) -> Outcome:
    """Run every stage of ``plan``. ``relay`` receives the stored per-epoch history of a
    cached stage this trial did not compute, so every trial's run shows its pretraining,
    and at the end one closing row: every stage's last metrics (the objective after the last
    stage, for the searcher) with :data:`COMPLETE`, or :data:`DIVERGED` when a stage's loss
    went non-finite (the remaining stages do not run)."""
    method = METHODS[spec.method]
    outputs: dict[str, str] = {}
    last: dict[str, Any] = {}
    try:
        for name, stage in method.stages.items():
            upstreams = {c: outputs[c] for c in stage.inputs if c in outputs}
            if stage.skip(plan.configs[name]):
                print(f"[raysuite] {run_name}: stage {name} skipped by its config")
                continue
            if stage.job_on == "driver":
                with tempfile.TemporaryDirectory(prefix=f"raysuite-{name}-") as out:
                    metrics = run_job(_stage_config(spec, plan, name, upstreams), Path(out))
                relay(metrics)
                last.update(metrics)
            elif stage.cacheable:

                def compute(name: str = name, upstreams: dict[str, str] = upstreams) -> dict[str, Any]:
                    result = run_stage(spec, plan, name, plan.keys[name], f"{storage}/stage_cache", upstreams,
                                       callbacks(), _fail_marker(storage, run_name, name), train_retries)  # fmt: skip
                    return {"checkpoint": result.checkpoint.path, "stage": name, "history": _history(result),
                            **stage_cache.describe(spec, plan, name)}  # fmt: skip

                marker, computed = stage_cache.get_or_compute(storage, plan.keys[name], name, run_name, compute, coordinator)
                telemetry.record_stage_cache(spec.name, name, hit=not computed)
                if not computed:
                    print(f"[raysuite] {run_name}: stage {name} reused from the stage cache (key {plan.keys[name]})")
                    for row in marker.get("history", []):
                        relay({**row, "stage_cache/hit": 1.0})
                last.update((marker.get("history") or [{}])[-1])
                outputs[name] = marker["checkpoint"]
            else:
                result = run_stage(spec, plan, name, f"{run_name}-{name}", storage, upstreams, callbacks(),
                                   _fail_marker(storage, run_name, name), train_retries)  # fmt: skip
                last.update(result.metrics or {})
                if result.checkpoint:
                    outputs[name] = result.checkpoint.path
    except StageDiverged as err:
        print(f"[raysuite] {run_name}: {err}; the trial ends FAILED (diverged), without retries", flush=True)
        relay({**_scalars(last), DIVERGED: 1.0})
        return "diverged"
    relay({**_scalars(last), COMPLETE: 1.0})
    return "complete"


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (artifact texts were logged when their stage reported them)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != CHECKPOINTED}


def _stage_config(spec: Spec, plan: TrialPlan, stage: str, upstreams: dict[str, str]) -> dict[str, Any]:
    """What a stage's worker (or driver job) needs to build its :class:`StageInputs`."""
    return {
        "method": spec.method,
        "stage": stage,
        "cfg": plan.configs[stage],
        "stages": plan.configs,
        "data": spec.data.model_dump(),
        "seed": plan.seeds[stage],
        "upstreams": upstreams,
        "fold": plan.fold,
        # this stage's pretrained files (stored directories), by field name
        "pretrained": {key.split(".", 1)[1]: uri for key, uri in plan.weights.items() if key.split(".", 1)[0] == stage},
    }


def _fail_marker(storage: str, run_name: str, stage: str) -> str:
    return f"{storage}/faults/{run_name}-{stage}"


def _history(result: ray.train.Result) -> list[dict[str, Any]]:
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as path:
        return json.loads(open(f"{path}/{HISTORY_FILE}").read())
