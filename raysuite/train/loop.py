"""The plain-PyTorch epoch loop shared by every stage (no Ray here).

A method stage hands over a :class:`Recipe`; a :class:`Runtime` supplies distribution
(DDP wrapping, sharded loaders, collectives), checkpoint restore and reporting. An
:class:`Evaluation` is sharded over the ranks (each predicts ``items[rank::world_size]``)
and scored on the gathered per-item records, so its metrics equal the single-process ones.
Every rank agrees on each step's loss being finite; a non-finite one raises
:class:`Diverged` on every rank at the same step. The loop checkpoints at every evaluation, resumes from the runtime's latest checkpoint, keeps the
best weights by the stage's monitored metric and stops early after ``patience`` epochs
without improvement. Each epoch also reports its throughput, data-wait share and time
(and GPU memory on CUDA): see :mod:`raysuite.train.telemetry`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from raysuite.train.meter import EpochMeter
from raysuite.train.optim import set_lr

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"  # per-epoch metrics, read back on stage-cache hits


class Runtime(Protocol):
    """Collectives are called on every rank in the same order; single-process ones return
    their input (``gather``: ``[value]``). :mod:`raysuite.train.collectives` implements them
    over ``torch.distributed``."""

    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module: ...
    def prepare_loader(self, loader: DataLoader) -> DataLoader: ...
    def broadcast(self, value: Any) -> Any: ...  # rank 0's value on every rank
    def all_mean(self, values: dict[str, float]) -> dict[str, float]: ...
    def gather(self, value: Any) -> list[Any]: ...  # every rank's value, in rank order
    def all_true(self, flag: bool) -> bool: ...  # flag holds on every rank
    def restore(self) -> contextlib.AbstractContextManager[Path | None]: ...
    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


class Diverged(FloatingPointError):
    """A non-finite training loss: raised on every rank at the same step (the ranks agree
    through :meth:`Runtime.all_true`), naming the stage, epoch (1-based) and step (0-based
    within the epoch). ``loss`` is this rank's value (finite where another rank diverged)."""

    def __init__(self, stage: str, epoch: int, step: int, loss: float = math.nan):
        self.stage, self.epoch, self.step, self.loss = stage, epoch, step, loss
        what = f"non-finite loss {loss}" if not math.isfinite(loss) else "non-finite loss on another rank"
        mine = f" (this rank's loss {loss})" if math.isfinite(loss) else ""
        super().__init__(f"{stage}: {what} at epoch {epoch} step {step}{mine}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Ray ships it) with its fields
        return type(self), (self.stage, self.epoch, self.step, self.loss)


Record = Any  # one evaluated item's result: a per-case dice array, an image's probability...


@dataclass(frozen=True)
class Evaluation:
    """An evaluation sharded over the ranks. Rank ``r`` of ``W`` calls ``predict(model,
    device, items[r::W])``, which returns one picklable record per item in that order (keep
    records small: per-item statistics, not full-size predictions); the records of every
    rank are gathered back into ``items`` order and ``score(records)`` turns them into
    metrics on rank 0, which every rank receives. Since ``score`` sees the same records in
    the same order whatever ``W``, the metrics equal the single-process ones: the instance
    called as ``evaluation(model, device)`` (no ranks) is the same computation."""

    items: Sequence[Any]  # e.g. dataset indices or validation cases
    predict: Callable[[nn.Module, torch.device, Sequence[Any]], list[Record]]
    score: Callable[[list[Record]], dict[str, Any]]

    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        return self.score(_predict(self, model, device, list(self.items)))


def _predict(
    evaluation: Evaluation, model: nn.Module, device: torch.device, items: list[Any]
) -> list[Record]:
    if not items:
        return []
    records = list(evaluation.predict(model, device, items))
    if len(records) != len(items):
        raise ValueError(f"Evaluation.predict returned {len(records)} records for {len(items)} items")
    return records


def run_evaluation(
    evaluate: Evaluation | Callable[[nn.Module, torch.device], dict[str, Any]],
    model: nn.Module,
    device: torch.device,
    runtime: Runtime,
) -> dict[str, Any]:
    """``evaluate``'s metrics on every rank. An :class:`Evaluation` is sharded over the
    ranks (all of them call this); a plain callable runs on rank 0 and is broadcast."""
    if not isinstance(evaluate, Evaluation):
        return runtime.broadcast(evaluate(model, device) if runtime.rank == 0 else None)
    items, rank, world = list(evaluate.items), runtime.rank, runtime.world_size
    shards = runtime.gather(_predict(evaluate, model, device, items[rank::world]))
    records: list[Record] = [None] * len(items)
    for r, shard in enumerate(shards):
        records[r::world] = shard
    return runtime.broadcast(evaluate.score(records) if rank == 0 else None)


def subset_loader(loader: DataLoader, indices: Sequence[int]) -> DataLoader:
    """``loader`` over ``loader.dataset[i] for i in indices`` in that order, with its batch
    size, collate function and workers: an :class:`Evaluation` shard of a validation loader."""
    return DataLoader(
        Subset(loader.dataset, list(indices)), batch_size=loader.batch_size, shuffle=False,
        collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
    )  # fmt: skip


def loader_evaluation(
    loader: DataLoader,
    predict: Callable[[nn.Module, torch.device, DataLoader], list[Record]],
    score: Callable[[list[Record]], dict[str, Any]],
) -> Evaluation:
    """An :class:`Evaluation` over the items of ``loader.dataset``: ``predict(model, device,
    shard_loader)`` returns one record per item of the shard's loader, in its order."""
    return Evaluation(
        range(len(cast(Sized, loader.dataset))),  # a map-style dataset
        lambda model, device, idx: predict(model, device, subset_loader(loader, idx)),
        score,
    )


@dataclass
class Recipe:
    """Everything a stage needs trained. ``step`` returns a dict with ``loss`` (a tensor)
    and optional float extras averaged per epoch; ``evaluate`` is an :class:`Evaluation`
    (sharded over the ranks) or a callable run on rank 0, both with the unwrapped model;
    ``epoch_end`` turns the epoch's collected step outputs into metrics."""

    stage: str
    model: nn.Module
    train_loader: DataLoader
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    lr_at: Callable[[int, int], float]  # (global step, total steps) -> lr
    step: Callable[[nn.Module, Any, torch.device], dict[str, Any]]
    epochs: int
    evaluate: Evaluation | Callable[[nn.Module, torch.device], dict[str, float]] | None = None
    eval_epochs: Callable[[int], bool] = lambda epoch: True  # 1-based epoch
    monitor: str | None = None  # e.g. "val/dice"; best weights and early stopping follow it
    mode: str = "max"
    patience: int | None = None  # epochs since the best evaluation before stopping
    epoch_end: Callable[[list[dict[str, Any]]], dict[str, float]] | None = None
    amp: bool = True
    # run once after training with the best weights (e.g. test-split metrics), like evaluate
    test: Evaluation | Callable[[nn.Module, torch.device], dict[str, float]] | None = None
    # called on every rank before each epoch (1-based), e.g. to switch an augmentation on
    epoch_start: Callable[[int], None] | None = None
    # called on every rank with each epoch's metrics (validation included), and replayed
    # over the restored history on resume: state that follows the metrics (a plateau lr
    # schedule) is then the same on every rank and after a restart
    on_metrics: Callable[[dict[str, Any]], None] | None = None


def load_state(checkpoint_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A stage checkpoint's state (model, optimiser, scaler, best weights, history) as the
    loop saves it. Read with ``weights_only=True``: tensors, numbers, strings and containers
    only, so a checkpoint someone else could write on shared storage cannot run code here."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location=map_location, weights_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def fit(recipe: Recipe, runtime: Runtime) -> dict[str, float]:
    """Train ``recipe`` to the end (or early stop). Returns the last reported metrics."""
    device = runtime.device
    raw_model = recipe.model.to(device)
    model = runtime.prepare_model(raw_model)
    # a wrapper (DDP) holds the model as .module
    module = cast(nn.Module, model.module) if hasattr(model, "module") else model
    loader = runtime.prepare_loader(recipe.train_loader)
    optimizer = recipe.make_optimizer(module)
    use_amp = recipe.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{recipe.stage}: no training batch per epoch ({len(cast(Sized, loader.dataset))} samples, "
            f"batch size {loader.batch_size} per worker, drop_last={loader.drop_last})"
        )
    total_steps = recipe.epochs * steps_per_epoch
    start_epoch, best, best_state, best_epoch = 0, None, None, 0
    history: list[dict[str, float]] = []

    with runtime.restore() as ckpt_dir:
        if ckpt_dir is not None:
            state = load_state(Path(ckpt_dir), device)
            module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, best, best_epoch = state["epoch"], state["best"], state["best_epoch"]
            best_state = state.get("best_model")
            history = state.get("history", [])
            if recipe.on_metrics is not None:
                for past in history:
                    recipe.on_metrics(past)

    metrics: dict[str, float] = {}
    prefix = recipe.stage
    for epoch in range(start_epoch + 1, recipe.epochs + 1):
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:  # a DistributedSampler's shuffle follows the epoch
            set_epoch(epoch)
        if recipe.epoch_start is not None:
            recipe.epoch_start(epoch)
        model.train()
        outputs: list[dict[str, Any]] = []
        meter = EpochMeter(device)
        for i, batch in enumerate(meter.batches(loader)):
            step = (epoch - 1) * steps_per_epoch + i
            set_lr(optimizer, recipe.lr_at(step, total_steps))
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                out = recipe.step(model, batch, device)
            loss = out["loss"]
            finite = bool(torch.isfinite(loss.detach()).all())
            if not runtime.all_true(finite):  # every rank stops here, before DDP's backward
                raise Diverged(prefix, epoch, i, float(loss.detach().float()))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            outputs.append({k: (v.detach().float().item() if torch.is_tensor(v) and v.numel() == 1 else v) for k, v in out.items()})
        timing = meter.stop(runtime.world_size)
        local = {f"{prefix}/loss": float(np.mean([o["loss"] for o in outputs]))}
        local.update({f"{prefix}/{k}": v for k, v in timing.items()})
        if recipe.epoch_end is not None:
            local.update({f"{prefix}/{k}": v for k, v in recipe.epoch_end(outputs).items()})
        metrics = runtime.all_mean(local)
        metrics.update({f"{prefix}/epoch": float(epoch), f"{prefix}/lr": optimizer.param_groups[0]["lr"]})

        evaluate = recipe.evaluate
        evaluate_now = evaluate is not None and (recipe.eval_epochs(epoch) or epoch == recipe.epochs)
        stop = False
        if evaluate is not None and evaluate_now:
            val = run_evaluation(evaluate, module, device, runtime)
            metrics.update(val)
            if recipe.monitor:
                value = val[recipe.monitor]
                if _better(value, best, recipe.mode):
                    best, best_epoch = float(value), epoch
                    best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                metrics[f"{recipe.monitor}_best"] = float(best) if best is not None else float("nan")
        if recipe.monitor and recipe.patience is not None and evaluate_now:
            stop = epoch - best_epoch >= recipe.patience
        history.append({k: v.item() if isinstance(v, np.generic) else v for k, v in metrics.items()})  # plain: weights_only
        if recipe.on_metrics is not None:
            recipe.on_metrics(metrics)
        checkpoint_now = evaluate_now or recipe.evaluate is None or epoch == recipe.epochs or stop
        if checkpoint_now:
            with _checkpoint(runtime.rank == 0) as tmp:
                if tmp is not None:
                    torch.save(
                        {
                            "model": module.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict(),
                            "epoch": epoch,
                            "best": best,
                            "best_epoch": best_epoch,
                            "best_model": best_state,
                            "history": history,
                        },
                        tmp / STATE_FILE,
                    )
                    (tmp / HISTORY_FILE).write_text(json.dumps(history))
                runtime.report(metrics, tmp)
        else:
            runtime.report(metrics, None)
        if stop:
            break
    if recipe.test is not None:
        if best_state is not None:
            module.load_state_dict(best_state)
        metrics = {**metrics, **run_evaluation(recipe.test, module, device, runtime)}
        runtime.report(metrics, None)
    return metrics


@contextlib.contextmanager
def _checkpoint(write: bool) -> Iterator[Path | None]:
    if not write:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="raysuite-ckpt-") as tmp:
        yield Path(tmp)
