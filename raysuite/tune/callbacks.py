"""Tune and Train callbacks that write MLflow runs (through ``raysuite.track``).

They run in the sweep driver (Tune) or next to it (the Train controller sits on the
driver's node), so an MLflow server bound to the head node's loopback is enough.
"""

from __future__ import annotations

import json
import time
from typing import Any

import ray.train
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS, DONE, SHOULD_CHECKPOINT, TRIAL_ID

from raysuite.methods.base import ARTIFACT
from raysuite.plan import TrialPlan, decode, plan
from raysuite.spec import Spec, resolve_stage_configs
from raysuite.track import mlflow_runs as track
from raysuite.tune.outcome import CHECKPOINTED, COMPLETE, DIVERGED, classify
from raysuite.tune.safe_callback import guarded
from raysuite.weight_resolution import Resolution


def _step(metrics: dict[str, Any]) -> int:
    return int(max((v for k, v in metrics.items() if k.endswith("/epoch") and isinstance(v, int | float)), default=0))


class MetricLog:
    """One run's metrics, each (metric, step) logged once, across retries and ``--resume``.

    A Train report (it carries :data:`CHECKPOINTED`) is held until a checkpoint covers it: a
    retry resumes from the last checkpoint and replays the epochs after it, and those
    replayed values, not the lost attempt's, belong to the model that goes on. A replayed
    epoch drops the held rows from it onwards; a checkpointed report writes the held rows.
    Rows from the trial driver (cached stages' histories, driver jobs) are final at once.
    ``logged`` starts from what the run already holds (:func:`track.logged_steps`)."""

    def __init__(self, client: Any, run_id: str, logged: set[tuple[str, int]]):
        self.client, self.run_id, self.logged = client, run_id, logged
        self.pending: list[dict[str, Any]] = []

    def add(self, metrics: dict[str, Any]) -> None:
        metrics = {k: v for k, v in metrics.items() if k not in _TUNE_KEYS}
        if CHECKPOINTED not in metrics:
            if COMPLETE in metrics or DIVERGED in metrics:  # the driver's closing row: the outcome only
                self.flush()
                metrics = {k: v for k, v in metrics.items() if k in (COMPLETE, DIVERGED)}
            self._write(metrics)
            return
        epochs = {k: v for k, v in metrics.items() if k.endswith("/epoch")}
        self.pending = [row for row in self.pending if not any(k in row and row[k] >= v for k, v in epochs.items())]
        self.pending.append(metrics)
        if metrics[CHECKPOINTED]:
            self.flush()

    def flush(self) -> None:
        for row in self.pending:
            self._write(row)
        self.pending = []

    def discard(self) -> None:
        """The attempt died: what no checkpoint covers will be replayed by the retry."""
        self.pending = []

    def _write(self, metrics: dict[str, Any]) -> None:
        step = _step(metrics)
        fresh = {k: v for k, v in metrics.items() if k != CHECKPOINTED and (k, step) not in self.logged}
        for key, text in fresh.items():
            if key.startswith(ARTIFACT) and isinstance(text, str):
                track.log_text(self.client, self.run_id, key[len(ARTIFACT) :], text)
        track.log_metrics(self.client, self.run_id, fresh, step, int(time.time() * 1000))
        self.logged.update((k, step) for k in fresh)


# what Tune adds to every result: not the trial's metrics
_TUNE_KEYS = {*AUTO_RESULT_KEYS, DONE, TRIAL_ID, SHOULD_CHECKPOINT}


def trial_params(p: TrialPlan) -> dict[str, Any]:
    """Resolved stage configs, the repeat, and the configuration as searched (``search.*``:
    grid, arm and Optuna values before a method folds them into its config, e.g. seed
    001's iou_min/iou_width into iou_interval), which the report's Optuna plots read."""
    return {"stages": p.configs, "repeat": p.repeat, "search": p.overrides}


def trial_tags(p: TrialPlan) -> dict[str, str]:
    return {
        "raysuite.config_id": p.config_id,
        "raysuite.config": p.label,
        "raysuite.repeat": json.dumps(p.repeat, sort_keys=True),
        **{f"raysuite.stage_key.{k}": v for k, v in p.keys.items()},
        # the stored pretrained file each weights field started from (<arch>-<sha of the file>)
        **{f"raysuite.weights.{k}": uri.rstrip("/").rsplit("/", 1)[-1] for k, uri in p.weights.items()},
    }


class MlflowTuneCallback(Callback):
    """One child run per trial under ``parent_id``; a retried trial continues its run. A
    pruned trial's run ends KILLED with ``raysuite.pruned=<rung>`` (``scheduler``: the
    study's :class:`RepeatASHA`, which knows the rung), a diverged one FAILED with
    ``raysuite.failure=diverged``."""

    def __init__(self, spec: Spec, parent_id: str, uri: str, study: str = "grid", scheduler: Any = None,
                 weights: Resolution | None = None):  # fmt: skip
        self.spec, self.parent_id, self.uri, self.study, self.scheduler = spec, parent_id, uri, study, scheduler
        self.weights = weights or Resolution()
        self.runs: dict[str, str] = {}
        self._logs: dict[str, MetricLog] = {}
        self._finished: set[str] = set()  # trials whose run ended FINISHED (a later prune re-ends it)
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = track.client(self.uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into its experiment state
        return {**self.__dict__, "_client": None, "_logs": {}}

    def _run(self, trial: Any) -> str:
        if trial.trial_id not in self.runs:
            overrides, repeat = decode(self.spec, trial.config)
            configs = resolve_stage_configs(self.spec, {**overrides, **repeat}, where="search")
            p = plan(self.spec, overrides, repeat, self.weights.for_trial(self.spec, configs))
            name = f"{p.label} | {','.join(f'{k}={v}' for k, v in sorted(p.repeat.items())) or 'r0'}"
            self.runs[trial.trial_id] = track.child_run(
                self.client, self.parent_id, f"{self.study}-{p.trial_key}", name, trial_params(p),
                {**trial_tags(p), "raysuite.tune_trial_id": trial.trial_id, "raysuite.study": self.study},
            )  # fmt: skip
        return self.runs[trial.trial_id]

    def _log(self, trial: Any) -> MetricLog:
        run = self._run(trial)
        if run not in self._logs:
            self._logs[run] = MetricLog(self.client, run, track.logged_steps(self.client, run))
        return self._logs[run]

    def _rung(self, trial_id: str) -> int | None:
        return getattr(self.scheduler, "pruned", {}).get(trial_id)

    @guarded
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)

    @guarded
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log(trial).discard()
        self.client.update_run(self._run(trial), status="RUNNING")

    @guarded
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._log(trial).add(result)

    @guarded
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log(trial).flush()
        outcome = classify(trial.last_result)
        if outcome == "complete":
            self._finished.add(trial.trial_id)
        track.end_run(self.client, self._run(trial), failed=outcome == "diverged", killed=outcome == "pruned",
                      tags=track.outcome_tags(outcome, self._rung(trial.trial_id)))  # fmt: skip
        self._sync_pruned()

    @guarded
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log(trial).flush()
        track.end_run(self.client, self._run(trial), failed=True)

    @guarded
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._sync_pruned()

    def _sync_pruned(self) -> None:
        """A configuration cut at a rung after one of its repeats had already finished (it
        reached the rung first and ran on): that repeat is pruned too, never averaged."""
        for trial_id in sorted(self._finished & set(getattr(self.scheduler, "pruned", {}))):
            self._finished.discard(trial_id)
            track.end_run(self.client, self.runs[trial_id], killed=True, tags=track.outcome_tags("pruned", self._rung(trial_id)))


class MlflowTrainCallback(ray.train.UserCallback):
    """``raysuite train``: logs rank 0's reports of every stage into one run."""

    def __init__(self, run_id: str, uri: str):
        self.run_id, self.uri = run_id, uri
        self._metric_log: MetricLog | None = None

    def log(self, metrics: dict[str, Any]) -> None:
        if self._metric_log is None:
            c = track.client(self.uri)
            self._metric_log = MetricLog(c, self.run_id, track.logged_steps(c, self.run_id))
        self._metric_log.add(metrics)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.log(metrics[0])
