"""What raysuite measures about its own training, and the names it exports them under.

The epoch loop (:func:`raysuite.train.loop.fit`) adds four keys per epoch, next to its
loss, as ``<stage>/<key>`` (they reach MLflow like every other metric):

``epoch_time_s``
    wall time of the epoch's training part (batches and steps; not evaluation).
``samples_per_s``
    training samples per second over all ranks: this rank's samples / ``epoch_time_s``
    × world size, then averaged over ranks (the sum of the ranks' rates when each
    rank's batch count is the same, as with a ``DistributedSampler``).
``data_wait_fraction``
    share of ``epoch_time_s`` spent in ``next()`` on the DataLoader's iterator (with
    worker processes: time the prefetch did not hide), averaged over ranks.
``gpu_mem_gb``
    on CUDA only: ``torch.cuda.max_memory_allocated`` during the epoch / 1e9 (the peak is
    reset each epoch), averaged over ranks.

:class:`raysuite.train.meter.EpochMeter` measures them.

:data:`METRICS` is the one table of the metrics ``raysuite.tune.telemetry`` records with
``ray.util.metrics``: name, kind, tag keys, description. It lives here, importing neither
Ray nor torch, so that ``raysuite validate`` can check dashboards against it quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EPOCH_TIME, SAMPLES_PER_S, DATA_WAIT, GPU_MEM = (
    "epoch_time_s",
    "samples_per_s",
    "data_wait_fraction",
    "gpu_mem_gb",
)

# Ray's metrics agent names every application metric "ray_<name>" (NAMESPACE in
# ray/_private/telemetry/open_telemetry_metric_recorder.py), and Prometheus exposes a
# counter as "<name>_total"; see raysuite.tune.telemetry for the details.
PROMETHEUS_PREFIX = "ray_"
TRIAL_STATES = ("running", "finished", "pruned", "failed")


@dataclass(frozen=True)
class MetricDef:
    """One metric raysuite exports. ``loop_key`` names the epoch-loop key it carries."""

    name: str
    kind: Literal["gauge", "counter"]
    tags: tuple[str, ...]
    description: str
    loop_key: str | None = None

    @property
    def prometheus_name(self) -> str:
        """The series name a PromQL query uses (``ray_`` prefix; ``_total`` on a counter)."""
        return PROMETHEUS_PREFIX + self.name + ("_total" if self.kind == "counter" else "")


_EPOCH_TAGS = ("experiment", "trial", "stage")
METRICS: tuple[MetricDef, ...] = (
    MetricDef("raysuite_samples_per_s", "gauge", _EPOCH_TAGS, "Training samples per second over all ranks, last epoch", SAMPLES_PER_S),
    MetricDef("raysuite_data_wait_fraction", "gauge", _EPOCH_TAGS, "Share of the last epoch's training time spent waiting for batches", DATA_WAIT),
    MetricDef("raysuite_gpu_mem_gb", "gauge", _EPOCH_TAGS, "Peak GPU memory allocated by PyTorch in the last epoch (GB, rank mean)", GPU_MEM),
    MetricDef("raysuite_epoch_time_s", "gauge", _EPOCH_TAGS, "Wall time of the last epoch's training part (s)", EPOCH_TIME),
    MetricDef("raysuite_trials", "gauge", ("experiment", "state"), "Tune trials of the sweep by state: running, finished, failed"),
    MetricDef("raysuite_stage_cache_hits", "counter", ("experiment", "stage"), "Stages a trial reused from the stage cache"),
    MetricDef("raysuite_stage_cache_misses", "counter", ("experiment", "stage"), "Stages a trial computed (and stored) for the stage cache"),
)  # fmt: skip
METRIC = {m.name: m for m in METRICS}
