"""The Ray Train worker function: one stage of one trial on one DDP rank."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from raysuite.methods import METHODS
from raysuite.methods.base import StageInputs
from raysuite.train.loop import HISTORY_FILE, fit, seed_everything
from raysuite.tune import telemetry


class RayRuntime:
    """:class:`~raysuite.train.loop.Runtime` over Ray Train V2 (gloo on CPU, NCCL on GPU).
    With ``telemetry_tags`` (``experiment``, ``trial``), rank 0 also exports each report's
    epoch metrics to Ray's metrics (:mod:`raysuite.tune.telemetry`)."""

    def __init__(
        self,
        fail_once_marker: str | None = None,
        fail_at_epoch: int | None = None,
        telemetry_tags: dict[str, str] | None = None,
    ):
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._marker, self._fail_at = fail_once_marker, fail_at_epoch
        self._telemetry_tags = telemetry_tags

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.world_size > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return ray.train.torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return ray.train.torch.prepare_data_loader(loader)

    def broadcast(self, value: Any) -> Any:
        if self.world_size == 1 or not dist.is_initialized():
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1 or not dist.is_initialized():
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.to(self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    @contextlib.contextmanager
    def restore(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as path:
            yield Path(path)

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if self._telemetry_tags is not None and self.rank == 0:
            telemetry.record_epoch(metrics, **self._telemetry_tags)
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if self._fail_at is None or not self._marker or os.path.exists(self._marker):
            return
        epoch = max((v for k, v in metrics.items() if k.endswith("/epoch")), default=0)
        if epoch >= self._fail_at and self.rank == 0:
            Path(self._marker).parent.mkdir(parents=True, exist_ok=True)
            Path(self._marker).write_text("failed once\n")
            raise RuntimeError(f"injected failure after epoch {int(epoch)} (faults.fail_once_at_epoch)")


def _inputs(config: dict[str, Any], stack: contextlib.ExitStack, rank: int = 0, world_size: int = 1) -> StageInputs:
    """The stage's :class:`StageInputs`, with each consumed checkpoint as a local directory
    (downloaded for the life of ``stack`` when it lives in remote storage)."""
    method = METHODS[config["method"]]
    stage = method.stages[config["stage"]]
    upstreams = {
        name: Path(stack.enter_context(ray.train.Checkpoint(path).as_directory()))
        for name, path in (config.get("upstreams") or {}).items()
    }
    single = next(iter(upstreams.values())) if len(upstreams) == 1 else None
    return StageInputs(
        stage.config.model_validate(config["cfg"]), config["data"], single, config["seed"], rank, world_size,
        config.get("stages", {}), upstreams, config.get("fold"),
    )  # fmt: skip


def run_job(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run a job stage into ``out``; returns its metrics (see :data:`~raysuite.methods.base.Job`)."""
    method = METHODS[config["method"]]
    method.prepare_data(config["data"])
    seed_everything(config["seed"])
    with contextlib.ExitStack() as stack:
        return method.stages[config["stage"]].job(_inputs(config, stack), out)


def stage_worker(config: dict[str, Any]) -> None:
    """Train ``config['stage']`` of ``config['method']``, or run its job in this (single)
    worker and report the job's output directory as the checkpoint; see ``raysuite.tune.trial``."""
    method = METHODS[config["method"]]
    stage = method.stages[config["stage"]]
    runtime = RayRuntime(config.get("fail_marker"), config.get("fail_at_epoch"), config.get("telemetry"))
    if stage.job is not None:
        with tempfile.TemporaryDirectory(prefix="raysuite-job-") as tmp:
            metrics = run_job(config, Path(tmp))
            (Path(tmp) / HISTORY_FILE).write_text(json.dumps([metrics]))
            runtime.report(metrics, Path(tmp))
        return
    method.prepare_data(config["data"])
    seed_everything(config["seed"] * 1000 + runtime.rank)
    with contextlib.ExitStack() as stack:
        fit(stage.recipe(_inputs(config, stack, runtime.rank, runtime.world_size)), runtime)
