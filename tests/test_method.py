"""Every registered method: TINY preset, one step, finite loss, parameters change (on its
format's synthetic data); and the iou_simsiam_seg stages really learn on synthetic FLARE22."""

import pytest
import torch

from raysuite.methods import METHODS
from raysuite.methods.base import StageInputs
from raysuite.train.loop import STATE_FILE, fit, seed_everything
from raysuite.train.runtime import LocalRuntime


def _inputs(method, stage, root, tmp_path, upstreams=None, **extra):
    """TINY with the smoke preset on top (small images and batches), ``extra`` on ``stage``."""
    data = {"format": method.data_format, "root": str(root), "cache_dir": str(tmp_path / "cache")}
    return _tiny(method, stage, data, upstreams, **extra)


def _tiny(method, stage, data, upstreams=None, **extra):
    overrides = {name: {**method.smoke.get(name, {})} for name in method.stages}
    overrides.setdefault(stage, {}).update(extra)
    return method.tiny_inputs(stage, data, overrides, upstreams)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_step_changes_parameters(name, method_data, tmp_path):
    """Each stage in turn, its weights saved as the next stage's upstream checkpoint."""
    method = METHODS[name]
    seed_everything(0)
    upstreams = {}
    for stage in [s for s, d in method.stages.items() if d.recipe is not None]:
        inputs = _tiny(method, stage, method_data(method), upstreams=dict(upstreams))
        recipe = method.stages[stage].recipe(inputs)
        model = recipe.model
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = recipe.make_optimizer(model)
        out = recipe.step(model, next(iter(recipe.train_loader)), torch.device("cpu"))
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
        optimizer.step()
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), stage
        (tmp_path / stage).mkdir()
        torch.save({"model": model.state_dict()}, tmp_path / stage / STATE_FILE)
        upstreams[stage] = tmp_path / stage


def test_finetune_learns_and_pretrained_encoder_loads_strictly(flare_root, tmp_path):
    method = METHODS["iou_simsiam_seg"]
    seed_everything(0)
    pre_rt = LocalRuntime(tmp_path / "pre")
    fit(method.stages["pretrain"].recipe(_inputs(method, "pretrain", flare_root, tmp_path)), pre_rt)
    assert all(0 <= r["pretrain/collapse"] <= 1 for r in pre_rt.reports)
    assert all(r["pretrain/iou_fallback_rate"] == 0 for r in pre_rt.reports)
    inputs = _inputs(method, "finetune", flare_root, tmp_path, epochs=6)
    inputs = StageInputs(inputs.cfg, inputs.data, pre_rt.checkpoints[-1], 0)
    untrained = method.stages["finetune"].recipe(inputs)
    chance = untrained.evaluate(untrained.model, torch.device("cpu"))["val/dice"]
    rt = LocalRuntime(tmp_path / "fine")
    fit(method.stages["finetune"].recipe(inputs), rt)
    losses = [r["finetune/loss"] for r in rt.reports]
    assert losses[-1] < losses[0]
    assert rt.reports[-1]["val/dice_best"] > chance + 0.03


def test_loop_resumes_from_checkpoint(flare_root, tmp_path):
    method = METHODS["iou_simsiam_seg"]
    seed_everything(0)
    rt = LocalRuntime(tmp_path / "ck")
    fit(method.stages["pretrain"].recipe(_inputs(method, "pretrain", flare_root, tmp_path, epochs=1)), rt)
    rt.reports.clear()
    fit(method.stages["pretrain"].recipe(_inputs(method, "pretrain", flare_root, tmp_path, epochs=2)), rt)
    assert [r["pretrain/epoch"] for r in rt.reports] == [2.0]
