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

from raysuite.methods.base import ARTIFACT
from raysuite.plan import TrialPlan, decode, plan
from raysuite.spec import Spec
from raysuite.track import mlflow_runs as track


def _step(metrics: dict[str, Any]) -> int:
    return int(max((v for k, v in metrics.items() if k.endswith("/epoch") and isinstance(v, int | float)), default=0))


def _log_fresh(client: Any, run_id: str, metrics: dict[str, Any], seen: dict[str, tuple[int, Any]]) -> None:
    """Log ``metrics`` at their epoch, skipping any value already logged at that step;
    ``artifact/<name>`` text values become the run's artifact ``<name>``."""
    step = _step(metrics)
    fresh = {k: v for k, v in metrics.items() if seen.get(k) != (step, v)}
    seen.update({k: (step, v) for k, v in fresh.items()})
    for key, text in fresh.items():
        if key.startswith(ARTIFACT) and isinstance(text, str):
            track.log_text(client, run_id, key[len(ARTIFACT) :], text)
    track.log_metrics(client, run_id, fresh, step, int(time.time() * 1000))


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
    }


class MlflowTuneCallback(Callback):
    """One child run per trial under ``parent_id``; a retried trial continues its run."""

    def __init__(self, spec: Spec, parent_id: str, uri: str):
        self.spec, self.parent_id, self.uri = spec, parent_id, uri
        self.runs: dict[str, str] = {}
        self._logged: dict[str, dict[str, tuple[int, Any]]] = {}  # run -> key -> (step, value)
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = track.client(self.uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into its experiment state
        return {**self.__dict__, "_client": None}

    def _run(self, trial: Any) -> str:
        if trial.trial_id not in self.runs:
            p = plan(self.spec, *decode(self.spec, trial.config))
            name = f"{p.label} | {','.join(f'{k}={v}' for k, v in sorted(p.repeat.items())) or 'r0'}"
            self.runs[trial.trial_id] = track.child_run(
                self.client, self.parent_id, p.trial_key, name, trial_params(p),
                {**trial_tags(p), "raysuite.tune_trial_id": trial.trial_id},
            )  # fmt: skip
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.client.update_run(self._run(trial), status="RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Logs each metric at the result's epoch, skipping a value already logged at that
        step (a stage's closing report repeats its last epoch's metrics beside new ones)."""
        run = self._run(trial)
        _log_fresh(self.client, run, result, self._logged.setdefault(run, {}))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        track.end_run(self.client, self._run(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        track.end_run(self.client, self._run(trial), failed=True)


class MlflowTrainCallback(ray.train.UserCallback):
    """``raysuite train``: logs rank 0's reports of every stage into one run."""

    def __init__(self, run_id: str, uri: str):
        self.run_id, self.uri = run_id, uri
        self._logged: dict[str, tuple[int, Any]] = {}

    def log(self, metrics: dict[str, Any]) -> None:
        _log_fresh(track.client(self.uri), self.run_id, metrics, self._logged)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.log(metrics[0])
