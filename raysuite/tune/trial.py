"""One trial: run a method's stages in order, each as a Ray Train ``TorchTrainer``
(Train V2), reusing cacheable stages from the stage cache.

Used as the Tune trial driver (``raysuite sweep``: metrics go to Tune through
``TuneReportCallback``) and directly by ``raysuite train``.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
from ray.exceptions import RayActorError
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.state import get_actor

from raysuite.methods import METHODS
from raysuite.plan import TrialPlan, stage_world_size
from raysuite.spec import Spec
from raysuite.storage import full_uri, join
from raysuite.train.loop import HISTORY_FILE
from raysuite.tune import stage_cache, telemetry
from raysuite.tune.outcome import CHECKPOINTED, COMPLETE, DIVERGED, Outcome
from raysuite.tune.worker import run_job, stage_worker


class StageDiverged(Exception):
    """A stage's loss went non-finite: the trial ends FAILED (diverged), never retried."""


NODE_LOSSES = 10
"""How many times one run of a stage is resumed after its workers were lost with their node
(preempted, removed or crashed). These do not count against ``train_retries`` (nor, in a
sweep, Tune's ``max_failures``), which are meant for real errors; one more node loss fails
the stage like a real error."""


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
    checkpoint (Train V2 restores its checkpoint manager from storage), as do the reruns
    after a failure: up to ``train_retries`` after real errors, and up to
    :data:`NODE_LOSSES` more after the workers were lost with their node (:func:`_fit`).
    Raises :class:`StageDiverged` when the stage's loss went non-finite."""
    res = spec.resources
    use_gpu = res.gpus_per_worker > 0
    workers = stage_world_size(spec, stage)
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
    trainer = functools.partial(
        TorchTrainer,
        stage_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=_backend(use_gpu, workers)),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            # every failure comes back to _fit, which tells node losses from real errors
            failure_config=ray.train.FailureConfig(max_failures=0, max_preemption_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    result = _fit(trainer, f"{plan.trial_key} stage {stage}", train_retries)
    if (result.metrics or {}).get(DIVERGED):
        raise StageDiverged(f"stage {stage}: non-finite loss")
    return result


def _backend(use_gpu: bool, world_size: int) -> str:
    """NCCL where GPUs exchange tensors; gloo for one worker, which runs no collective (ours
    return at world size 1, and no DDP wraps a single worker's model). NCCL cannot start
    without CUDA (``ProcessGroupNCCL is only supported with GPUs``), so one worker on a GPU
    that is a Ray resource only (``benchmarks/cluster_sim.py``'s fake GPUs) still runs."""
    return "nccl" if use_gpu and world_size > 1 else "gloo"


def _fit(trainer: Callable[[], TorchTrainer], what: str, train_retries: int) -> ray.train.Result:
    """``trainer().fit()``, fitted again after a failure (each fit resumes from the run's
    latest checkpoint): up to :data:`NODE_LOSSES` times when the workers were lost with their
    node (:func:`_lost_with_node`), and up to ``train_retries`` times after real errors.

    Train's own retries are off because it tells the two apart only for a node *drained* for
    preemption (``max_preemption_failures``): a worker whose node was removed, crashed or
    terminated without a drain comes back as an ``ActorDiedError`` with ``preempted=False``
    and Train charges it to ``max_failures``."""
    losses = failures = 0
    while True:
        try:
            return trainer().fit()
        except ray.train.TrainingFailedError as err:
            if _lost_with_node(err) and losses < NODE_LOSSES:
                losses += 1
                print(f"[raysuite] {what}: workers lost with their node ({losses} of {NODE_LOSSES} allowed); "
                      "resuming from the last checkpoint", flush=True)  # fmt: skip
            elif failures < train_retries:
                failures += 1
                print(f"[raysuite] {what}: failed ({failures} of {train_retries} retries); resuming from the last "
                      "checkpoint", flush=True)  # fmt: skip
            else:
                raise


def _lost_with_node(err: ray.train.TrainingFailedError) -> bool:
    """Whether a failed run lost workers with their node: Train's own verdict of preemption
    (a ``PreemptionError``, or a worker on a node drained for preemption), or a worker that
    Ray's GCS says died because its node died. One such worker is enough, as in Train's
    ``_is_preemption_failure``: when one rank dies, the others fail with collateral errors
    (collective aborts, connection resets)."""
    if isinstance(err, ray.train.PreemptionError):
        return True
    if not isinstance(err, ray.train.WorkerGroupError):
        return False
    for failure in err.worker_failures.values():
        # a dead worker comes wrapped in Train's WorkerHealthCheckFailedError
        died = getattr(failure, "health_check_failure", failure)
        if isinstance(died, RayActorError) and (died.preempted or _died_with_node(died.actor_id)):
            return True
    return False


def _died_with_node(actor_id: str | None) -> bool:
    """Whether the actor's recorded death cause is its node's death (the State API)."""
    if actor_id is None:
        return False
    try:
        actor = get_actor(actor_id, address=ray.get_runtime_context().gcs_address)
    except Exception as err:  # noqa: BLE001 (the State API is down: a real error, as Train would count it)
        print(f"[raysuite] could not read worker {actor_id}'s death cause ({type(err).__name__}); "
              "counting the failure as a real error", flush=True)  # fmt: skip
        return False
    # ray wraps ActorState in its own @dataclass decorator, which hides the fields from pyright
    cause = (actor.death_cause or {}) if actor is not None else {}  # pyright: ignore[reportAttributeAccessIssue]
    return cause.get("actor_died_error_context", {}).get("reason") == "NODE_DIED"


def run_trial(
    spec: Spec,
    plan: TrialPlan,
    storage: str,
    run_name: str,
    callbacks: Callable[[], list[Any]],
    relay: Callable[[dict[str, Any]], None],
    coordinator: stage_cache.Scope | None,
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
            if stage.skips(plan.configs[name]):
                print(f"[raysuite] {run_name}: stage {name} skipped by its config")
                continue
            if stage.job_on == "driver":
                with tempfile.TemporaryDirectory(prefix=f"raysuite-{name}-") as out:
                    metrics = run_job(_stage_config(spec, plan, name, upstreams), Path(out))
                relay(metrics)
                last.update(metrics)
            elif stage.cacheable:

                def compute(name: str = name, upstreams: dict[str, str] = upstreams) -> dict[str, Any]:
                    result = run_stage(spec, plan, name, plan.keys[name], join(storage, "stage_cache"), upstreams,
                                       callbacks(), _fail_marker(storage, run_name, name), train_retries)  # fmt: skip
                    assert result.checkpoint is not None  # a trained stage reports one
                    return {"checkpoint": full_uri(storage, result.checkpoint.path), "stage": name, "history": _history(result),
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
                    outputs[name] = full_uri(storage, result.checkpoint.path)
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
    return join(storage, "faults", f"{run_name}-{stage}")


def _history(result: ray.train.Result) -> list[dict[str, Any]]:
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as path:
        return json.loads(open(f"{path}/{HISTORY_FILE}").read())
