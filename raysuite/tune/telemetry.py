"""raysuite's own metrics, recorded with ``ray.util.metrics`` for Prometheus and Grafana.

The names, kinds and tag keys come from :data:`raysuite.train.telemetry.METRICS` (no Ray
there, so ``raysuite validate`` can read them). Where they are recorded:

- epoch metrics (samples/s, data wait, GPU memory, epoch time): rank 0 of each Train
  worker group, from the metrics the epoch loop reports (:func:`record_epoch`);
- trials running / finished / pruned / failed: the sweep driver, :class:`TrialStateCallback`;
- stage-cache hits and misses: the trial driver, :func:`record_stage_cache`.

Naming, as verified in Ray 2.60's source: each process sends its metrics to its node's
metrics agent (``ray/dashboard/modules/reporter/reporter_agent.py``,
``_export_number_data``: a gauge stays a gauge, a monotonic sum, i.e. a ``Counter``,
becomes a counter), which registers them as OpenTelemetry instruments named
``f"{NAMESPACE}_{name}"`` with ``NAMESPACE = "ray"``
(``ray/_private/telemetry/open_telemetry_metric_recorder.py``: line 21, and lines 230 and
257 for gauges and counters) and exposes them on the node's ``--metrics-export-port``
through the OpenTelemetry Prometheus exporter. Their unit ``"1"`` adds no suffix
(``opentelemetry/exporter/prometheus/_mapping.py``: ``"1": ""``); a counter goes out
through ``prometheus_client``'s ``CounterMetricFamily``, whose samples are
``<name>_total`` (``prometheus_client/metrics_core.py``, ``add_metric``). So
``Gauge("raysuite_samples_per_s")`` is the series ``ray_raysuite_samples_per_s`` and
``Counter("raysuite_stage_cache_hits")`` is ``ray_raysuite_stage_cache_hits_total`` (only
that: the untotalled gauge twin exists only with ``RAY_enable_open_telemetry=0``, the
legacy OpenCensus path). Scraping a local node's endpoint shows the same. Ray adds its own
labels (``Component``, ``NodeAddress``, ``SessionName``, ``Version``, ``WorkerId``) and
Prometheus ``instance``, so dashboards aggregate (``max by (trial, stage)``, ``sum``).
A gauge is exported while the recording process lives: a trial's epoch gauges vanish
shortly after its workers exit.

Recording never breaks training: a failure is swallowed after one warning per process.
"""

from __future__ import annotations

import warnings
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any

from ray.tune import Callback
from ray.util.metrics import Counter, Gauge, Metric

from raysuite.train.telemetry import METRIC, METRICS, TRIAL_STATES
from raysuite.tune.outcome import classify
from raysuite.tune.safe_callback import guarded

_BY_LOOP_KEY = {d.loop_key: d for d in METRICS if d.loop_key}
_metrics: dict[str, Metric] = {}
_warned = False


def _metric(name: str) -> Metric:
    """The process's ``ray.util.metrics`` object for ``name``, created on first use."""
    if name not in _metrics:
        d = METRIC[name]
        kind = Gauge if d.kind == "gauge" else Counter
        _metrics[name] = kind(d.name, description=d.description, tag_keys=d.tags)
    return _metrics[name]


def _gauge(name: str) -> Gauge:
    metric = _metric(name)
    assert isinstance(metric, Gauge), f"{name} is a {type(metric).__name__}"
    return metric


def _counter(name: str) -> Counter:
    metric = _metric(name)
    assert isinstance(metric, Counter), f"{name} is a {type(metric).__name__}"
    return metric


def _safely(record: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Call ``record``; on any error warn once per process and carry on."""
    global _warned
    try:
        record(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - telemetry must never stop a trial
        if not _warned:
            _warned = True
            warnings.warn(
                f"raysuite telemetry disabled for this error: {type(err).__name__}: {err}",
                stacklevel=2,
            )


def record_epoch(metrics: dict[str, Any], experiment: str, trial: str) -> None:
    """Set the epoch gauges from the loop's ``<stage>/<loop key>`` entries in ``metrics``."""
    _safely(_record_epoch, metrics, experiment, trial)


def _record_epoch(metrics: dict[str, Any], experiment: str, trial: str) -> None:
    for key, value in metrics.items():
        stage, _, name = key.rpartition("/")
        if stage and name in _BY_LOOP_KEY and isinstance(value, int | float):
            tags = {"experiment": experiment, "trial": trial, "stage": stage}
            _gauge(_BY_LOOP_KEY[name].name).set(float(value), tags=tags)


def record_stage_cache(experiment: str, stage: str, hit: bool) -> None:
    """Count one stage-cache lookup: a reuse (``hit``) or a computation."""
    name = "raysuite_stage_cache_hits" if hit else "raysuite_stage_cache_misses"
    _safely(lambda: _counter(name).inc(tags={"experiment": experiment, "stage": stage}))


def record_trials(experiment: str, counts: dict[str, int]) -> None:
    """Set the trial gauge for every state in :data:`TRIAL_STATES` (absent: 0)."""

    def record() -> None:
        for state in TRIAL_STATES:
            _gauge("raysuite_trials").set(
                float(counts.get(state, 0)), tags={"experiment": experiment, "state": state}
            )

    _safely(record)


class TrialStateCallback(Callback):
    """Keeps each Tune trial's latest state (running, finished, pruned, failed) and exports the
    counts. One instance serves every study of a sweep, so the counts add up over them;
    a trial restarted after a failure (or on resume) counts as running again."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self.states: dict[str, str] = {}

    def _set(self, trial: Any, state: str) -> None:
        self.states[trial.trial_id] = state
        record_trials(self.experiment, dict(Tally(self.states.values())))

    @guarded
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._set(trial, "running")

    @guarded
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        outcome = classify(trial.last_result)
        self._set(trial, {"complete": "finished", "diverged": "failed"}.get(outcome, outcome))

    @guarded
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._set(trial, "failed")
