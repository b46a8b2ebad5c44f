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
from torch import nn
from torch.utils.data import DataLoader

from raysuite.methods import METHODS
from raysuite.methods.base import StageInputs
from raysuite.methods.nn.pretrained import STATE_FILE
from raysuite.train import collectives
from raysuite.train.loop import HISTORY_FILE, Diverged, Recipe, fit, seed_everything
from raysuite.train.sharding import shard_loader
from raysuite.tune import posthoc_search, telemetry
from raysuite.tune.outcome import CHECKPOINTED, DIVERGED


class RayRuntime:
    """:class:`~raysuite.train.loop.Runtime` over Ray Train V2 (gloo on CPU, NCCL on GPU).
    With ``telemetry_tags`` (``experiment``, ``trial``), rank 0 also exports each report's
    epoch metrics to Ray's metrics (:mod:`raysuite.tune.telemetry`)."""

    def __init__(
        self,
        fail_once_marker: str | None = None,
        fail_at_epoch: int | None = None,
        telemetry_tags: dict[str, str] | None = None,
        seed: int = 0,
    ):
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._marker, self._fail_at = fail_once_marker, fail_at_epoch
        self._telemetry_tags = telemetry_tags
        self._checkpointed_epoch = 0.0
        self.seed = seed  # the stage's seed: the training loader's data order

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.world_size > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return ray.train.torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        """``loader`` sharded over the ranks, its order seeded by the stage's seed, a per-epoch
        cap kept (:func:`~raysuite.train.sharding.shard_loader`). Not Ray's
        ``prepare_data_loader``: its ``DistributedSampler`` has seed 0 whatever the stage's and
        replaces a capped ``RandomSampler`` by a full pass. Batches stay on the CPU; each
        method's ``step`` moves them to the device."""
        return shard_loader(loader, self.rank, self.world_size, self.seed)

    def broadcast(self, value: Any) -> Any:
        return collectives.broadcast(value)

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        return collectives.all_mean(values, self.device)

    def gather(self, value: Any) -> list[Any]:
        return collectives.gather(value)

    def all_true(self, flag: bool) -> bool:
        return collectives.all_true(flag, self.device)

    @contextlib.contextmanager
    def restore(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as path:
            yield Path(path)

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Report to Train; :data:`CHECKPOINTED` tells the sweep's MLflow callback whether a
        retry would replay this report (no checkpoint covers its epoch yet) or not."""
        if self._telemetry_tags is not None and self.rank == 0:
            telemetry.record_epoch(metrics, **self._telemetry_tags)
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        epoch = max((v for k, v in metrics.items() if k.endswith("/epoch")), default=0)
        if checkpoint is not None:
            self._checkpointed_epoch = epoch
        covered = checkpoint is not None or epoch <= self._checkpointed_epoch or DIVERGED in metrics
        ray.train.report({**metrics, CHECKPOINTED: float(covered)}, checkpoint=checkpoint)
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
    weights = {
        name: Path(stack.enter_context(ray.train.Checkpoint(uri).as_directory())) / STATE_FILE
        for name, uri in (config.get("pretrained") or {}).items()
    }
    # the post-hoc searcher (grid or Optuna) of every job this builds: worker jobs here,
    # driver jobs through run_job (tune/trial.py); a method never imports tune/ itself
    return StageInputs(
        stage.config.model_validate(config["cfg"]), config["data"], single, config["seed"], rank, world_size,
        config.get("stages", {}), upstreams, config.get("fold"), weights, posthoc_search=posthoc_search.search,
    )  # fmt: skip


def run_job(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run a job stage into ``out``; returns its metrics (see :data:`~raysuite.methods.base.Job`)."""
    method = METHODS[config["method"]]
    method.prepare_data(config["data"])
    seed_everything(config["seed"])
    job = method.stages[config["stage"]].job
    assert job is not None, f"{config['stage']} is a training stage, not a job"
    with contextlib.ExitStack() as stack:
        return job(_inputs(config, stack), out)


def stage_worker(config: dict[str, Any]) -> None:
    """Train ``config['stage']`` of ``config['method']``, or run its job in this (single)
    worker and report the job's output directory as the checkpoint; see ``raysuite.tune.trial``.
    A non-finite loss (every rank raises :class:`Diverged` at the same step) is reported as
    :data:`DIVERGED` and the worker returns normally: retrying a diverged training from its
    checkpoint only diverges again, so Train must not see it as a fault."""
    method = METHODS[config["method"]]
    stage = method.stages[config["stage"]]
    # the data order follows the repeat: the stage's seed, and the fold (MURA's folds share one split)
    order_seed = config["seed"] * 1009 + (config.get("fold") or 0)
    runtime = RayRuntime(config.get("fail_marker"), config.get("fail_at_epoch"), config.get("telemetry"), seed=order_seed)
    if stage.job is not None:
        with tempfile.TemporaryDirectory(prefix="raysuite-job-") as tmp:
            metrics = run_job(config, Path(tmp))
            (Path(tmp) / HISTORY_FILE).write_text(json.dumps([metrics]))
            runtime.report(metrics, Path(tmp))
        return
    method.prepare_data(config["data"])
    seed_everything(config["seed"] * 1000 + runtime.rank)
    assert stage.recipe is not None  # a stage has a recipe or a job
    with contextlib.ExitStack() as stack:
        recipe = stage.recipe(_inputs(config, stack, runtime.rank, runtime.world_size))
        if config.get("diverge_at_epoch"):
            _diverge_drill(recipe, int(config["diverge_at_epoch"]), config.get("diverge_log"), runtime.rank)
        try:
            fit(recipe, runtime)
        except Diverged as err:
            print(f"[raysuite] {err}: the trial ends FAILED (diverged), without retries", flush=True)
            # with a checkpoint (a note, no weights): Train V2's Result.metrics are those of
            # the latest checkpointed report, and the driver reads the divergence there
            with tempfile.TemporaryDirectory(prefix="raysuite-diverged-") as tmp:
                note = Path(tmp) if runtime.rank == 0 else None
                if note is not None:
                    (note / "diverged.txt").write_text(f"{err}\n")
                runtime.report({f"{config['stage']}/diverged": 1.0, DIVERGED: 1.0}, note)


def _diverge_drill(recipe: Recipe, epoch: int, log: str | None, rank: int) -> None:
    """``faults.diverge_at_epoch``: the loss turns NaN from that epoch on (tests of the
    no-retry rule); each attempt that reaches it appends a line to ``log``."""
    step, start = recipe.step, recipe.epoch_start
    current = [0]

    def epoch_start(e: int) -> None:
        current[0] = e
        if start is not None:
            start(e)
        if e == epoch and log and rank == 0:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(f"diverged at epoch {e}\n")

    def nan_step(net: nn.Module, batch: Any, device: Any) -> dict[str, Any]:
        out = step(net, batch, device)
        return {**out, "loss": out["loss"] * float("nan")} if current[0] >= epoch else out

    recipe.step, recipe.epoch_start = nan_step, epoch_start
