"""A benchmark-only method with seed 001's design shape whose stages sleep instead of
training (``benchmarks/cluster_sim.py``; spec ``method: cluster_sim_method:METHOD`` with
``benchmarks/`` on every node's ``PYTHONPATH``).

Stage ``pretrain``: a cacheable job keyed, as ``iou_simsiam_seg``'s pretraining is, by its
config (``interval``, ``seconds``) and ``pretrain.seed``; ``interval: null`` skips it (the
no-pretraining arm). Stage ``finetune``: a job consuming it. Each runs in one Ray Train
worker (``job_on="worker"``: it holds the trial's GPU) and sleeps ``seconds``. Each writes
a timing record (:func:`read_records`) into ``record_dir``, a directory every node sees,
so the benchmark can add up the device-seconds its stages kept busy.

The spec schema wants a data section: the method names ``flare22`` (seed 001's format) and
reads nothing of it; ``prepare_data`` and ``manifest_hash`` keep their defaults (no files,
no manifest), so any existing directory serves as ``data.root``.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field

from raysuite.methods.base import Job, Method, StageConfig, StageDef, StageInputs

OUTPUT = "output.json"  # what a pretraining leaves in its checkpoint


class SleepConfig(StageConfig):
    """A stage that holds its device for ``seconds`` and records when."""

    seconds: float = Field(20.0, ge=0)
    record_dir: str | None = None  # where the timing records go (None: none written)


class PretrainConfig(SleepConfig):
    # seed 001's pretraining axis (an IoU interval); null skips the stage
    interval: tuple[float, float] | None = (0.3, 0.6)


class FinetuneConfig(SleepConfig):
    pass


def _placement() -> dict[str, Any]:
    """The Ray node and the GPU ids this worker holds (imported here: the method module
    itself stays free of Ray, as the real methods are)."""
    import ray

    context = ray.get_runtime_context()
    return {"node": context.get_node_id(), "gpus": list(context.get_accelerator_ids().get("GPU", []))}


def _sleep_job(stage: str) -> Job:
    """The job of ``stage``: sleep, then write the record and (pretraining) the output."""

    def job(inp: StageInputs, out: Path) -> dict[str, Any]:
        start = time.time()
        time.sleep(inp.cfg.seconds)
        end = time.time()
        upstream = None
        if inp.upstream is not None:  # the pretraining's checkpoint, loaded as a real stage would
            upstream = json.loads((inp.upstream / OUTPUT).read_text())["id"]
        record = {
            "id": uuid.uuid4().hex, "stage": stage, "start": start, "end": end, "host": socket.gethostname(),
            "interval": inp.stages.get("pretrain", {}).get("interval"),
            "pretrain_seed": inp.stages.get("pretrain", {}).get("seed"),
            "finetune_seed": inp.stages.get("finetune", {}).get("seed"),
            "upstream": upstream, **_placement(),
        }  # fmt: skip
        (out / OUTPUT).write_text(json.dumps(record))
        if inp.cfg.record_dir:
            directory = Path(inp.cfg.record_dir)
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".{record['id']}.tmp"
            tmp.write_text(json.dumps(record))
            tmp.rename(directory / f"{stage}-{record['id']}.json")  # whole or absent
        metrics: dict[str, Any] = {f"{stage}/seconds": end - start}
        if stage == "finetune":
            metrics["val/score"] = _score(inp)
        return metrics

    return job


def _score(inp: StageInputs) -> float:
    """A deterministic stand-in for the headline metric: a wider interval scores higher."""
    interval = inp.stages.get("pretrain", {}).get("interval")
    width = 0.0 if interval is None else interval[1] - interval[0]
    return round(0.5 + 0.4 * width + 0.01 * (inp.seed % 7), 6)


def read_records(record_dir: str | Path) -> list[dict[str, Any]]:
    """Every stage's record: ``stage``, ``start`` and ``end`` (epoch seconds), ``node``
    (Ray node id), ``gpus`` (ids held), ``interval``, the seeds and, for a fine-tuning,
    ``upstream`` (the id of the pretraining record it loaded)."""
    return [json.loads(p.read_text()) for p in sorted(Path(record_dir).glob("*.json"))]


METHOD = Method(
    name="cluster_sim_method",
    seed="001_a6906726c99d77f3.txt",
    data_format="flare22",
    stages={
        "pretrain": StageDef(
            "pretrain", PretrainConfig, job=_sleep_job("pretrain"), cacheable=True,
            skip=lambda cfg: cfg["interval"] is None,
        ),
        "finetune": StageDef("finetune", FinetuneConfig, job=_sleep_job("finetune"), consumes="pretrain"),
    },  # fmt: skip
    monitor="val/score",
    baseline={"pretrain.interval": None},
    metrics={"pretrain": ("pretrain/seconds",), "finetune": ("finetune/seconds", "val/score")},
)
