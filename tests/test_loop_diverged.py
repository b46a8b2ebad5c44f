"""A non-finite loss ends the stage with ``Diverged`` on every rank at the same step."""

from __future__ import annotations

import contextlib
import math
import pickle
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import raysuite.methods  # noqa: F401  (first: importing raysuite.train.loop first is an import cycle)
from raysuite.train import collectives
from raysuite.train.loop import Diverged, Recipe, fit, seed_everything
from raysuite.train.runtime import LocalRuntime

SAMPLES, BATCH = 16, 4  # 4 steps an epoch in one process, 2 per rank with two


def _recipe(bad_step: int | None, value: float = math.nan, epochs: int = 3) -> Recipe:
    """A linear regression whose loss is ``value`` at global step ``bad_step`` (0-based)."""
    seed_everything(0)
    x = torch.randn(SAMPLES, 3)
    calls = [0]

    def step(net, batch, device):
        xb, yb = batch
        loss = F.mse_loss(net(xb.to(device)), yb.to(device))
        if calls[0] == bad_step:
            loss = loss * value
        calls[0] += 1
        return {"loss": loss}

    return Recipe(
        stage="train", model=nn.Linear(3, 1),
        train_loader=DataLoader(TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]])), batch_size=BATCH),
        make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.05), lr_at=lambda s, t: 0.05,
        step=step, epochs=epochs, amp=False,
    )  # fmt: skip


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_loss_raises_diverged_naming_stage_epoch_step(value):
    runtime = LocalRuntime(device="cpu")
    with pytest.raises(Diverged, match="train: non-finite loss (nan|inf) at epoch 2 step 2") as info:
        fit(_recipe(bad_step=6, value=value), runtime)  # epoch 2 (1-based), its step 2 (0-based)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.stage, err.epoch, err.step) == ("train", 2, 2)
    assert str(err).startswith("train: non-finite loss") and "at epoch 2 step 2" in str(err)
    assert [r["train/epoch"] for r in runtime.reports] == [1.0]  # epoch 1 reported, then stopped
    back = pickle.loads(pickle.dumps(err))  # Ray ships the exception to the driver
    assert type(back) is Diverged and str(back) == str(err) and back.epoch == 2


def test_finite_loss_does_not_diverge():
    runtime = LocalRuntime(device="cpu")
    fit(_recipe(bad_step=None), runtime)
    assert [r["train/epoch"] for r in runtime.reports] == [1.0, 2.0, 3.0]


# ------------------------------------------------------------- two gloo ranks (DDP, no Ray)


class DistRuntime:
    """A Runtime over the initialised default process group: DDP, a DistributedSampler."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.reports: list[dict[str, float]] = []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return nn.parallel.DistributedDataParallel(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        sampler = DistributedSampler(loader.dataset, shuffle=False)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler)

    broadcast = staticmethod(collectives.broadcast)
    gather = staticmethod(collectives.gather)
    all_true = staticmethod(collectives.all_true)
    all_mean = staticmethod(collectives.all_mean)

    def restore(self):
        return contextlib.nullcontext(None)

    def report(self, metrics, checkpoint_dir) -> None:
        self.reports.append(dict(metrics))


def _worker(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))  # fmt: skip
    try:
        runtime = DistRuntime()
        try:  # rank 1 alone sees a NaN at its global step 3: epoch 2, step 1
            fit(_recipe(bad_step=3 if rank == 1 else None), runtime)
            result = None
        except Diverged as err:
            result = (err.stage, err.epoch, err.step, str(err), [r["train/epoch"] for r in runtime.reports])
        (out / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def test_every_ddp_rank_raises_diverged_at_the_same_step(tmp_path):
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, tmp_path), nprocs=2, join=True)
    r0, r1 = (pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2))
    assert r0 is not None and r1 is not None  # both raised, none hung or trained on
    assert r0[:3] == r1[:3] == ("train", 2, 1)
    assert r0[4] == r1[4] == [1.0]
    assert "another rank" in r0[3] and "this rank's loss" in r0[3]
    assert r1[3] == "train: non-finite loss nan at epoch 2 step 1"
