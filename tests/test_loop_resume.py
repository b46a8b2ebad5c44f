"""A stage interrupted after a checkpoint and resumed ends where an uninterrupted run ends:
the same weights, optimiser state (Adam's step counts and moments) and GradScaler state,
tensor for tensor. Deterministic CPU ops and an unshuffled loader make "the same" exact.

The loop enables its GradScaler on CUDA only; here a CPU scaler that grows every step
(``growth_interval=1``) stands in for it, so a scaler that was not restored shows as a scale
off by a power of two (its unscaled gradients would not: scaling by 2^k is exact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from raysuite.train import loop
from raysuite.train.loop import Recipe, fit, load_state, seed_everything
from raysuite.train.optim import warmup_cosine
from raysuite.train.runtime import LocalRuntime

EPOCHS, SAMPLES, BATCH = 3, 24, 6  # 4 steps per epoch


class Interrupted(RuntimeError):
    """The trial was killed between two epochs (after the previous epoch's checkpoint)."""


@pytest.fixture(autouse=True)
def cpu_scaler(monkeypatch):
    """The loop's ``torch.amp.GradScaler(...)`` as an enabled CPU scaler, doubling its scale
    after every step from 2^10."""
    real = torch.amp.GradScaler

    def scaler(device: str = "cuda", enabled: bool = True, **kwargs: Any) -> torch.amp.GradScaler:
        return real("cpu", init_scale=2.0**10, growth_interval=1, enabled=True)

    monkeypatch.setattr(loop.torch.amp, "GradScaler", scaler)


def _recipe(init_seed: int, stop_before: int | None = None) -> Recipe:
    """A 2-layer net fitting a fixed regression with Adam under a warm-up cosine lr. Its
    initial weights come from ``init_seed``: a resumed run starts from other weights than
    the run it resumes, so only a restore can make them equal. ``stop_before``: raise
    :class:`Interrupted` as that epoch (1-based) starts."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 4, generator=g)
    y = torch.sin(x @ torch.randn(4, 1, generator=g))
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def start(epoch: int) -> None:
        if epoch == stop_before:
            raise Interrupted(f"killed before epoch {epoch}")

    return Recipe(
        stage="train", model=model, train_loader=DataLoader(TensorDataset(x, y), batch_size=BATCH),
        make_optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3),
        lr_at=lambda step, total: warmup_cosine(step, total, 2, 1e-2, 1e-4),
        step=lambda net, batch, device: {"loss": F.mse_loss(net(batch[0]), batch[1])},
        epochs=EPOCHS, epoch_start=start, amp=False,
    )  # fmt: skip


def _differences(resumed: dict[str, Any], uninterrupted: dict[str, Any]) -> list[str]:
    """The parts of two loop checkpoints that differ: ``model`` (any weight), ``optimizer``
    (its groups, or any state tensor: Adam's ``step``, ``exp_avg``, ``exp_avg_sq``),
    ``scaler``, ``epoch``; compared exactly."""

    def same_tensors(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    ours, theirs = resumed["optimizer"], uninterrupted["optimizer"]
    assert theirs["state"], "the optimiser has state to compare"
    optimizer_same = ours["param_groups"] == theirs["param_groups"] and ours["state"].keys() == theirs["state"].keys() \
        and all(same_tensors(ours["state"][i], theirs["state"][i]) for i in theirs["state"])  # fmt: skip
    same = {
        "epoch": resumed["epoch"] == uninterrupted["epoch"],
        "model": same_tensors(resumed["model"], uninterrupted["model"]),
        "optimizer": optimizer_same,
        "scaler": resumed["scaler"] == uninterrupted["scaler"],
    }
    return [part for part, equal in same.items() if not equal]


def _interrupted_after_one_epoch(tmp_path: Path) -> tuple[LocalRuntime, LocalRuntime]:
    """(an uninterrupted run of EPOCHS, a run killed before epoch 2)."""
    seed_everything(0)
    whole = LocalRuntime(tmp_path / "whole", device="cpu")
    fit(_recipe(init_seed=1), whole)
    broken = LocalRuntime(tmp_path / "broken", device="cpu")
    with pytest.raises(Interrupted, match="killed before epoch 2"):
        fit(_recipe(init_seed=1, stop_before=2), broken)
    return whole, broken


def test_resume_restores_weights_optimiser_and_scaler_state(tmp_path: Path):
    whole, broken = _interrupted_after_one_epoch(tmp_path)
    assert len(whole.checkpoints) == EPOCHS  # no evaluation: a checkpoint every epoch
    assert [r["train/epoch"] for r in broken.reports] == [1.0]
    # what the interrupted run left is the uninterrupted run's state after epoch 1
    assert _differences(load_state(broken.checkpoints[-1]), load_state(whole.checkpoints[0])) == []

    fit(_recipe(init_seed=2), broken)  # a fresh process: other initial weights, a new optimiser
    assert [r["train/epoch"] for r in broken.reports] == [1.0, 2.0, 3.0]
    assert [r["train/loss"] for r in broken.reports] == [r["train/loss"] for r in whole.reports]
    assert [r["train/lr"] for r in broken.reports] == [r["train/lr"] for r in whole.reports]
    for resumed, uninterrupted in zip(broken.checkpoints[1:], whole.checkpoints[1:], strict=True):
        assert _differences(load_state(resumed), load_state(uninterrupted)) == []
    # the scaler grew once per step: 2^10 -> 2^(10 + 12) after 3 epochs of 4 steps
    assert load_state(broken.checkpoints[-1])["scaler"]["scale"] == 2.0 ** (10 + EPOCHS * 4)


@pytest.mark.parametrize(
    ("part", "differ"), [("optimizer", ["model", "optimizer"]), ("scaler", ["scaler"])]
)
def test_a_restore_that_drops_a_part_is_caught(
    tmp_path: Path, monkeypatch, part: str, differ: list[str]
):
    """The comparison above fails when the loop forgets to restore the optimiser or the
    scaler (the checkpoint's ``part`` replaced on load by a freshly built one's): a fresh
    Adam moves the weights elsewhere; a fresh scaler leaves them (its 2^k scaling is exact)
    but ends on another scale."""
    whole, broken = _interrupted_after_one_epoch(tmp_path)
    real = loop.load_state

    def forgetful(checkpoint_dir, map_location="cpu"):
        state = real(checkpoint_dir, map_location)
        if part == "scaler":
            return {
                **state,
                "scaler": torch.amp.GradScaler(
                    "cpu", init_scale=2.0**10, growth_interval=1
                ).state_dict(),
            }
        return {
            **state,
            "optimizer": {"state": {}, "param_groups": state["optimizer"]["param_groups"]},
        }

    monkeypatch.setattr(loop, "load_state", forgetful)
    fit(_recipe(init_seed=2), broken)
    assert (
        _differences(load_state(broken.checkpoints[-1]), load_state(whole.checkpoints[-1]))
        == differ
    )
