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
from raysuite.track import retry
from raysuite.tune.outcome import CHECKPOINTED, COMPLETE, DIVERGED, classify
from raysuite.tune.safe_callback import guarded
from raysuite.tune.sweep_search import STUDY
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
    ``logged`` starts from what the run already holds (:func:`track.logged_steps`; None:
    read before the first write, so a log can be made while tracking is down).

    A tracking fault never raises out of a write. Each MLflow call is retried
    (:func:`retry.retried`); a (metric, step) joins ``logged`` only once MLflow took it. A
    final row a transient fault kept back stays in ``unsent``, with the timestamp of its
    first try, and is sent before the next row (and by :meth:`send` at the end of a study),
    so an outage shorter than the study loses nothing; a row MLflow refused for good (not
    transient) is dropped with a warning. ``unsent`` lives in this process only: a row
    still unsent when the driver dies is lost."""

    def __init__(self, client: Any, run_id: str, logged: set[tuple[str, int]] | None):
        self.client, self.run_id, self.logged = client, run_id, logged
        self.pending: list[dict[str, Any]] = []
        self.unsent: list[tuple[dict[str, Any], int, int]] = []  # (metrics, step, timestamp ms)

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
        row = {k: v for k, v in metrics.items() if k != CHECKPOINTED}
        self.unsent.append((row, _step(metrics), int(time.time() * 1000)))
        self.send()

    def send(self, during_outage: bool = False) -> None:
        """Send the rows held back, oldest first, until one meets a transient fault (tracking
        is down: the rest wait). ``during_outage``: try even within an outage's cool-down."""
        while self.unsent:
            row, step, timestamp_ms = self.unsent[0]
            try:
                if self.logged is None:
                    self.logged = retry.retried(track.logged_steps, self.client, self.run_id, during_outage=during_outage)
                self._send(row, step, timestamp_ms, self.logged, during_outage)
            except Exception as err:  # noqa: BLE001 - a tracking fault costs a metric, not the sweep
                if retry.transient(err):
                    return
                retry.warn(f"run {self.run_id}: metrics at step {step} refused, not logged: {retry.describe(err)}")
            self.unsent.pop(0)

    def _send(self, row: dict[str, Any], step: int, timestamp_ms: int, logged: set[tuple[str, int]],
              during_outage: bool) -> None:  # fmt: skip
        fresh = {k: v for k, v in row.items() if (k, step) not in logged}
        for key, text in fresh.items():
            if key.startswith(ARTIFACT) and isinstance(text, str):
                retry.retried(track.log_text, self.client, self.run_id, key[len(ARTIFACT) :], text, during_outage=during_outage)
                logged.add((key, step))
        retry.retried(track.log_metrics, self.client, self.run_id, fresh, step, timestamp_ms, during_outage=during_outage)
        logged.update((k, step) for k in fresh)


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
    ``raysuite.failure=diverged``.

    Tracking faults: every hook is :func:`guarded`, every MLflow call retried
    (:mod:`raysuite.track.retry`), metrics kept back by an outage are sent later
    (:class:`MetricLog`), and a run that could not be ended is ended at the end of the
    study (``on_experiment_end``). What still fails is printed and lost; the sweep goes on."""

    def __init__(self, spec: Spec, parent_id: str, uri: str, study: str = "grid", scheduler: Any = None,
                 weights: Resolution | None = None):  # fmt: skip
        self.spec, self.parent_id, self.uri, self.study, self.scheduler = spec, parent_id, uri, study, scheduler
        self.weights = weights or Resolution()
        self.runs: dict[str, str] = {}
        self._logs: dict[str, MetricLog] = {}
        self._finished: set[str] = set()  # trials whose run ended FINISHED (a later prune re-ends it)
        self._unended: dict[str, dict[str, Any]] = {}  # run id -> end_run's arguments, not yet taken
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
            study = trial.config.get(STUDY, self.study)  # one Tuner runs both studies: the config says which
            # repeatable as a whole: it finds the run a lost answer had created
            self.runs[trial.trial_id] = retry.retried(
                track.child_run, self.client, self.parent_id, f"{study}-{p.trial_key}", name, trial_params(p),
                {**trial_tags(p), "raysuite.tune_trial_id": trial.trial_id, "raysuite.study": study},
            )  # fmt: skip
        return self.runs[trial.trial_id]

    def _log(self, trial: Any) -> MetricLog:
        run = self._run(trial)
        if run not in self._logs:
            self._logs[run] = MetricLog(self.client, run, None)
        return self._logs[run]

    def _flush(self, trial: Any) -> None:
        """Write the trial's held rows, if it has a log (without one, nothing is held)."""
        log = self._logs.get(self.runs.get(trial.trial_id, ""))
        if log is not None:
            log.flush()

    def _end(self, run_id: str, **how: Any) -> None:
        """:func:`track.end_run`; when tracking is down, kept for ``on_experiment_end``."""
        self._unended[run_id] = how
        try:
            retry.retried(track.end_run, self.client, run_id, **how)
        except Exception as err:  # noqa: BLE001 - retried at the end of the study
            retry.warn(f"run {run_id} not ended yet ({retry.describe(err)}); tried again when the study ends")
            return
        del self._unended[run_id]

    def _rung(self, trial_id: str) -> int | None:
        return getattr(self.scheduler, "pruned", {}).get(trial_id)

    @guarded
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)

    @guarded
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._run(trial)
        if run in self._logs:
            self._logs[run].discard()
        retry.retried(self.client.update_run, run, status="RUNNING")

    @guarded
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._log(trial).add(result)

    @guarded
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._flush(trial)
        outcome = classify(trial.last_result)
        if outcome == "complete":
            self._finished.add(trial.trial_id)
        self._end(self._run(trial), failed=outcome == "diverged", killed=outcome == "pruned",
                  tags=track.outcome_tags(outcome, self._rung(trial.trial_id)))  # fmt: skip
        self._sync_pruned()

    @guarded
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._flush(trial)
        self._end(self._run(trial), failed=True)

    @guarded
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The study's last word: prunes synced, then the rows and run ends an outage kept
        back are tried once more, cool-down or not; what still fails is reported lost."""
        self._sync_pruned()
        for log in self._logs.values():
            log.send(during_outage=True)
            if log.unsent:
                retry.warn(f"run {log.run_id}: {len(log.unsent)} metric rows could not be logged and are lost")
        for run_id, how in list(self._unended.items()):
            if track.close_run(self.client, run_id, **how):
                del self._unended[run_id]

    def _sync_pruned(self) -> None:
        """A configuration cut at a rung after one of its repeats had already finished (it
        reached the rung first and ran on): that repeat is pruned too, never averaged."""
        for trial_id in sorted(self._finished & set(getattr(self.scheduler, "pruned", {}))):
            self._finished.discard(trial_id)
            self._end(self.runs[trial_id], killed=True, tags=track.outcome_tags("pruned", self._rung(trial_id)))


class MlflowTrainCallback(ray.train.UserCallback):
    """``raysuite train``: logs rank 0's reports of every stage into one run. A tracking
    fault never fails the training: Train V2's controller turns an exception in
    ``after_report`` into a ControllerError that ends the run (or spends one of its
    ``max_failures``), so :meth:`log`, all ``after_report`` does, is :func:`guarded`."""

    def __init__(self, run_id: str, uri: str):
        self.run_id, self.uri = run_id, uri
        self._metric_log: MetricLog | None = None

    @guarded
    def log(self, metrics: dict[str, Any]) -> None:
        if self._metric_log is None:
            self._metric_log = MetricLog(track.client(self.uri), self.run_id, None)
        self._metric_log.add(metrics)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.log(metrics[0])
