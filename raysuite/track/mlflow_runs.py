"""MLflow layout of DESIGN.md: one parent run per sweep invocation, one child run per trial.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so
the sweep driver can log for many trials at once and a retried trial finds its run again
by its ``raysuite.trial_key`` tag.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysuite.track import retry

ROLE = "raysuite.role"
TRIAL_KEY = "raysuite.trial_key"
PARENT = "mlflow.parentRunId"
# DICOM keywords that identify a patient: never logged, whatever a config contains.
PHI_KEYS = re.compile(
    r"(patient(name|id|birth|address|telephone)|accession|institution|referringphysician|otherpatient)",
    re.IGNORECASE,
)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db`` (MLflow 3 deprecates file stores)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client(uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri=uri or tracking_uri())


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted-key params, values JSON-encoded (lists stay readable), PHI-named keys dropped."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if PHI_KEYS.search(name.replace("_", "")):
            continue
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def _experiment_id(c: MlflowClient, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp else c.create_experiment(name)


def start_parent(c: MlflowClient, experiment: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    run = c.create_run(_experiment_id(c, experiment), tags={ROLE: "sweep", **tags}, run_name=tags.get("mlflow.runName"))
    log_params(c, run.info.run_id, params)
    return run.info.run_id


def child_run(c: MlflowClient, parent_id: str, trial_key: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """The trial's child run: reused (set RUNNING again) when the trial is retried."""
    parent = c.get_run(parent_id)
    found = c.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT}` = '{parent_id}' and tags.`{TRIAL_KEY}` = '{trial_key}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        return run_id
    run = c.create_run(
        parent.info.experiment_id,
        tags={ROLE: "trial", PARENT: parent_id, TRIAL_KEY: trial_key, **tags},
        run_name=name,
    )
    log_params(c, run.info.run_id, params)
    return run.info.run_id


def log_params(c: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    flat = flatten(params)
    items = [Param(k, v[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def log_metrics(c: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int, timestamp_ms: int) -> None:
    """Numeric, finite metrics only; ``/`` and ``_`` kept as in the names raysuite reports."""
    batch = [
        Metric(k, float(v), timestamp_ms, step)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    if batch:
        c.log_batch(run_id, metrics=batch)


PRUNED = "raysuite.pruned"  # the rung (progress-stage epoch) at which the scheduler cut the configuration
FAILURE = "raysuite.failure"  # why a trial failed when raysuite knows (``diverged``)


def outcome_tags(outcome: str, rung: int | None = None) -> dict[str, str]:
    """Tags recording how a trial ended: ``raysuite.pruned=<rung>``, ``raysuite.failure=diverged``."""
    if outcome == "pruned":
        return {PRUNED: str(rung) if rung is not None else "unknown"}
    return {FAILURE: outcome} if outcome == "diverged" else {}


def end_run(
    c: MlflowClient, run_id: str, failed: bool = False, killed: bool = False, tags: Mapping[str, str] | None = None
) -> None:
    """End a run FINISHED, FAILED or (a pruned trial) KILLED, after setting ``tags``."""
    for key, value in (tags or {}).items():
        c.set_tag(run_id, key, value)
    status = RunStatus.FAILED if failed else RunStatus.KILLED if killed else RunStatus.FINISHED
    c.set_terminated(run_id, RunStatus.to_string(status))


def close_run(
    c: MlflowClient, run_id: str, failed: bool = False, killed: bool = False, tags: Mapping[str, str] | None = None
) -> bool:
    """:func:`end_run` for cleanup paths (``finally``, ``except``): retried on transient
    errors, during an outage too; never raises an ``Exception`` (a failure is printed).
    Returns whether the run was ended."""
    return retry.attempt(f"end run {run_id}", end_run, c, run_id, failed=failed, killed=killed, tags=tags)


def close_children(c: MlflowClient, parent_id: str) -> int | None:
    """:func:`fail_unfinished_children` for cleanup paths, retried like :func:`close_run`
    and never raising an ``Exception``. Returns the count, or None when it failed."""
    try:
        return retry.retried(fail_unfinished_children, c, parent_id, during_outage=True)
    except Exception as err:  # noqa: BLE001 - cleanup must go on
        retry.warn(f"could not fail the unfinished children of run {parent_id}: {retry.describe(err)}")
        return None


def logged_steps(c: MlflowClient, run_id: str) -> set[tuple[str, int]]:
    """Every (metric, step) the run holds: a resumed sweep logs none of them again."""
    run = c.get_run(run_id)
    return {(key, m.step) for key in run.data.metrics for m in c.get_metric_history(run_id, key)}


def fail_unfinished_children(c: MlflowClient, parent_id: str) -> int:
    """Mark children left RUNNING (a trial whose process died) as FAILED. Returns the count."""
    n = 0
    for run in children(c, parent_id):
        if run.info.status == "RUNNING":
            end_run(c, run.info.run_id, failed=True)
            n += 1
    return n


def children(c: MlflowClient, parent_id: str) -> list[Any]:
    parent = c.get_run(parent_id)
    return c.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT}` = '{parent_id}'", max_results=10000)


def log_text(c: MlflowClient, run_id: str, name: str, text: str) -> None:
    """``text`` as the run's artifact ``name`` (``a/b.csv`` goes to folder ``a``)."""
    folder, _, base = name.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / base
        path.write_text(text)
        c.log_artifact(run_id, str(path), artifact_path=folder or None)


def log_file(c: MlflowClient, run_id: str, path: str | Path) -> None:
    c.log_artifact(run_id, str(path))


def child_table(c: MlflowClient, parent_id: str) -> pd.DataFrame:
    """One row per child run: its tags (without the ``raysuite.`` prefix), status,
    ``start_time``/``end_time`` (ms since the epoch; end NaN while running), params (as
    ``param.<key>``, JSON text) and the latest value of every metric. The metric names are
    in ``table.attrs["metrics"]``."""
    rows, metrics = [], set()
    for run in children(c, parent_id):
        row = {"run_id": run.info.run_id, "status": run.info.status,
               "start_time": run.info.start_time, "end_time": run.info.end_time}  # fmt: skip
        row.update({k.removeprefix("raysuite."): v for k, v in run.data.tags.items() if k.startswith("raysuite.")})
        row.update({f"param.{k}": v for k, v in run.data.params.items()})
        row.update(run.data.metrics)
        metrics.update(run.data.metrics)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["metrics"] = sorted(metrics)
    return table


def latest_sweep(c: MlflowClient, experiment: str) -> str:
    """Run id of the newest sweep (parent) run of ``experiment``; LookupError if none."""
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {experiment!r} at {c.tracking_uri}")
    found = c.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'sweep'",
                          order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    if not found:
        raise LookupError(f"experiment {experiment!r} has no sweep run")
    return found[0].info.run_id


def run_info(c: MlflowClient, run_id: str) -> dict[str, Any]:
    """Experiment name, run name, status and tags of a run."""
    run = c.get_run(run_id)
    return {"experiment": c.get_experiment(run.info.experiment_id).name, "run_name": run.info.run_name,
            "status": run.info.status, "tags": dict(run.data.tags)}  # fmt: skip


def read_text(c: MlflowClient, run_id: str, name: str) -> str | None:
    """The run's text artifact ``name``, or None when it has none."""
    folder = name.rpartition("/")[0] or None
    if name not in {a.path for a in c.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(c.download_artifacts(run_id, name, tmp)).read_text()


def metric_history(c: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in c.get_metric_history(run_id, key)]


def run_exists(c: MlflowClient, run_id: str) -> bool:
    """Whether the store behind ``c`` holds run ``run_id`` (a resumed sweep's parent)."""
    try:
        c.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True
