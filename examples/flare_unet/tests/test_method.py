"""The ``flare_unet`` method on its own (no Ray): the loss is the formula it states, a few
steps lower it, one epoch reports the declared metrics, and the sweep's objective is one
of them. Runs on a small synthetic FLARE22 (3 labelled + 3 unlabelled cases)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from flare_unet.method import METHOD, TrainConfig, WeightedDiceCE, prepare_data

from raysuite.train.loop import Recipe, fit, seed_everything
from raysuite.train.runtime import LocalRuntime

HERE = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A synthetic FLARE22 root and its manifest, through the method's own prepare_data."""
    tmp = tmp_path_factory.mktemp("flare_unet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYSUITE_SALT", "flare-unet-example-salt-0")  # never ~/.config/raysuite/salt
        spec_data = {"format": "flare22", "root": str(tmp / "flare22"), "cache_dir": str(tmp / "cache"),
                     "synthetic_if_missing": True, "synthetic_cases": 3}  # fmt: skip
        prepare_data(spec_data)
        yield spec_data


def _recipe(data: dict, **extra) -> Recipe:
    build = METHOD.stages["train"].recipe
    assert build is not None  # a training stage
    return build(_inputs(data, **extra))


def _inputs(data: dict, **extra):
    """The train stage's inputs: TINY preset, smoke preset on top, a smaller split (3
    synthetic cases), then ``extra``."""
    small = {"labelled_cases": 2, "val_cases": 1, "max_slices_per_epoch": 32}
    return METHOD.tiny_inputs("train", data, {"train": {**METHOD.smoke["train"], **small, **extra}})


def test_loss_is_the_weighted_sum_computed_by_hand():
    # one image of two pixels, two classes: pixel A is class 1 with logits (0, ln 3), so
    # p = (1/4, 3/4); pixel B is class 0 with logits (0, 0), so p = (1/2, 1/2)
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])  # (B=1, C=2, H=1, W=2)
    target = torch.tensor([[[[1, 0]]]])  # (B=1, 1, H=1, W=2)
    s = 1e-5  # MONAI's smooth_nr = smooth_dr
    # class 0: sum p g = 1/2, sum p = 3/4, sum g = 1; class 1: sum p g = 3/4, sum p = 5/4, sum g = 1
    dice = ((1 - (1.0 + s) / (1.75 + s)) + (1 - (1.5 + s) / (2.25 + s))) / 2
    ce = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    assert dice == pytest.approx(8 / 21, abs=1e-5)  # (3/7 + 1/3) / 2 without the smoothing
    assert ce == pytest.approx(math.log(8 / 3) / 2)
    for w_dice, w_ce in [(1.0, 1.0), (0.0, 1.0), (0.5, 2.0), (1.0, 0.0)]:
        loss, dice_term, ce_term = WeightedDiceCE(w_dice, w_ce)(logits, target)
        assert float(dice_term) == pytest.approx(dice, abs=1e-6)
        assert float(ce_term) == pytest.approx(ce, abs=1e-6)
        assert float(loss) == pytest.approx(w_dice * dice + w_ce * ce, abs=1e-6), (w_dice, w_ce)


def test_config_refuses_a_zero_loss_and_a_crop_the_unet_cannot_halve():
    with pytest.raises(ValueError, match="both 0"):
        TrainConfig.model_validate({"dice_weight": 0.0, "ce_weight": 0.0})
    with pytest.raises(ValueError, match="multiple of 8"):
        TrainConfig.model_validate({"channels": [8, 16, 32, 64], "crop_size": 100})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        TrainConfig.model_validate({"dice_wieght": 1.0})  # a typo is an error, not a default


def test_a_few_steps_lower_the_loss_on_a_batch(data):
    seed_everything(0)
    recipe = _recipe(data, dice_weight=0.5)
    model, batch = recipe.model, next(iter(recipe.train_loader))
    optimizer = recipe.make_optimizer(model)
    losses = []
    for _ in range(8):
        out = recipe.step(model, batch, CPU)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
        assert float(out["loss"].detach()) == pytest.approx(0.5 * float(out["dice_term"]) + float(out["ce_term"]), rel=1e-5)
    assert losses[-1] < 0.9 * losses[0], losses


def test_one_epoch_reports_the_declared_metrics(data, tmp_path):
    seed_everything(0)
    runtime = LocalRuntime(tmp_path / "ckpt", device="cpu")
    fit(_recipe(data, epochs=1), runtime)
    (report,) = runtime.reports
    assert 0.0 <= report["val/dice"] <= 1.0 and report["val/dice_best"] == report["val/dice"]
    assert report["train/dice_term"] > 0 and report["train/ce_term"] > 0
    assert set(report) <= set(METHOD.metric_keys()), set(report) - set(METHOD.metric_keys())
    assert set(METHOD.metrics["train"]) <= set(report)


def test_the_sweep_objective_and_baseline_are_the_methods():
    spec = yaml.safe_load((HERE / "sweeps" / "loss_weights.yaml").read_text())
    assert spec["objective"]["metric"] in METHOD.metric_keys()
    values = spec["search"]["grid"]["train.dice_weight"]
    assert METHOD.baseline["train.dice_weight"] in values and len(values) >= 2
    for value in values:  # every grid point is a valid config
        TrainConfig.model_validate({**spec["stages"]["train"], "dice_weight": value})
