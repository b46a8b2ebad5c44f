"""Every registered method: TINY preset, one step, finite loss, parameters change (on its
format's synthetic data); and the iou_simsiam_seg stages really learn on synthetic FLARE22."""

import copy
import math
from pathlib import Path

import pytest
import torch

from raysuite.methods import METHODS
from raysuite.methods.base import ARTIFACT, StageInputs
from raysuite.train.loop import STATE_FILE, fit, seed_everything
from raysuite.train.runtime import LocalRuntime

BUILTINS = ("genesis_cls", "iou_simsiam_seg", "one_case_cascade", "simclr_detection", "weak_localization")


def _inputs(method, stage, root, tmp_path, upstreams=None, **extra):
    """TINY with the smoke preset on top (small images and batches), ``extra`` on ``stage``."""
    data = {"format": method.data_format, "root": str(root), "cache_dir": str(tmp_path / "cache")}
    return _tiny(method, stage, data, upstreams, **extra)


def _tiny(method, stage, data, upstreams=None, **extra):
    overrides = {name: {**method.smoke.get(name, {})} for name in method.stages}
    overrides.setdefault(stage, {}).update(extra)
    return method.tiny_inputs(stage, data, overrides, upstreams)


# Each training stage's parameters in named groups (by name prefix; every parameter falls
# in exactly one): "train" groups must move in one optimiser step by more than their own
# relative tolerance ||after - before|| / ||before|| and hold non-zero gradients; "frozen"
# groups must neither change nor receive a gradient. The tolerances sit about two orders of
# magnitude under what the TINY presets move (an encoder at a small lr moves least).
Group = tuple[tuple[str, ...], str, float]  # (name prefixes, "train" | "frozen", tolerance)
GROUPS: dict[tuple[str, str], dict[str, Group]] = {
    ("genesis_cls", "pretrain"): {"encoder": (("net.encoder.",), "train", 1e-5),
                                  "decoder+head": (("net.decoder.", "net.head."), "train", 1e-4)},
    ("genesis_cls", "finetune"): {"encoder": (("encoder.",), "train", 1e-6),
                                  "head": (("dense.", "out."), "train", 1e-4)},
    ("iou_simsiam_seg", "pretrain"): {"encoder": (("encoder.",), "train", 1e-5),
                                      "projector+predictor": (("projector.", "predictor."), "train", 1e-5)},
    ("iou_simsiam_seg", "finetune"): {"encoder": (("swinViT.",), "train", 1e-5),
                                      "decoder+head": (("encoder1", "encoder2.", "encoder3.", "encoder4.", "decoder", "out."), "train", 1e-5)},
    ("one_case_cascade", "classifier"): {"encoder": (("conv1.", "bn1.", "layer"), "train", 1e-5),
                                         "head": (("fc.",), "train", 1e-5)},
    ("one_case_cascade", "segmenter"): {"encoder": (("encoder.",), "train", 1e-5),
                                        "decoder+head": (("decoder.", "head."), "train", 1e-5)},
    ("simclr_detection", "pretrain"): {"encoder": (("encoder.",), "train", 1e-5),
                                       "head": (("head.",), "train", 1e-5)},
    ("simclr_detection", "finetune"): {"encoder": (("backbone.",), "train", 1e-6),
                                       "head": (("rpn.", "roi_heads."), "train", 1e-5)},
    ("weak_localization", "train"): {"encoder": (("backbone.",), "train", 1e-5),
                                     "head": (("head.",), "train", 1e-5)},
    # the PAC-CRF on the frozen base model; its compatibility starts at zero (the CRF starts
    # as the identity), so the feature branch has no gradient before the second step
    ("weak_localization", "crf"): {"base": (("base.",), "frozen", 0.0),
                                   "branch": (("branch.",), "train", 1e-6),
                                   "crf": (("crf.",), "train", 1e-5)},
}  # fmt: skip
STEPS = {("weak_localization", "crf"): 2}  # optimiser steps before the checks (default 1)


def _grouped(name: str, stage: str, model: torch.nn.Module) -> dict[str, list[str]]:
    """Parameter names per group of GROUPS (an out-of-tree method: one group, the model)."""
    groups = GROUPS.get((name, stage), {"model": (("",), "train", 1e-6)})
    named: dict[str, list[str]] = {g: [] for g in groups}
    for key, _ in model.named_parameters():
        owners = [g for g, (prefixes, _, _) in groups.items() if key.startswith(prefixes)]
        assert len(owners) == 1, f"{name}.{stage}: parameter {key} is in groups {owners}"
        named[owners[0]].append(key)
    assert all(named.values()), f"{name}.{stage}: an empty group in {named}"
    return named


def _check_groups(name, stage, model, before):
    params = dict(model.named_parameters())
    for group, keys in _grouped(name, stage, model).items():
        _, kind, tol = GROUPS.get((name, stage), {group: ((), "train", 1e-6)})[group]
        where = f"{name}.{stage}.{group}"
        if kind == "frozen":
            assert all(not params[k].requires_grad and params[k].grad is None for k in keys), where
            assert all(torch.equal(before[k], params[k]) for k in keys), f"{where} changed"
            continue
        delta = torch.sqrt(sum(((params[k].detach() - before[k]).double() ** 2).sum() for k in keys))
        norm = torch.sqrt(sum((before[k].double() ** 2).sum() for k in keys))
        assert float(delta / norm) > tol, f"{where} moved {float(delta / norm):.3g} <= {tol}"
        grads = [params[k].grad for k in keys if params[k].grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), where
        assert any(bool(g.abs().sum() > 0) for g in grads), f"{where}: every gradient is zero"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_step_moves_encoder_and_head_and_jobs_run(name, method_data, tmp_path):
    """Each stage in order, as a trial runs them: a training stage takes one optimiser step
    (two where GROUPS says why) and its encoder and head are checked apart; a job stage
    (worker or driver) runs on the TINY outputs of the stages it consumes. Each stage's
    output is the next stages' upstream."""
    method = METHODS[name]
    data = method_data(method)
    seed_everything(0)
    upstreams: dict[str, Path] = {}
    for stage, definition in method.stages.items():
        consumed = {s: upstreams[s] for s in definition.inputs if s in upstreams}
        inputs = _tiny(method, stage, data, upstreams=consumed)
        if definition.skip(inputs.cfg):
            continue
        out = tmp_path / stage
        out.mkdir()
        if definition.job is not None:
            metrics = definition.job(inputs, out)
            numbers = {k: v for k, v in metrics.items() if not k.startswith(ARTIFACT)}
            assert numbers and all(math.isfinite(float(v)) for v in numbers.values()), (stage, metrics)
            assert set(method.metrics.get(stage, ())) <= set(metrics), stage
            if definition.job_on == "worker":
                assert any(out.iterdir()), f"{name}.{stage} wrote nothing"
            upstreams[stage] = out
            continue
        recipe = definition.recipe(inputs)
        model = recipe.model
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        optimizer = recipe.make_optimizer(model)
        batches = iter(recipe.train_loader)
        for _ in range(STEPS.get((name, stage), 1)):
            optimizer.zero_grad(set_to_none=True)
            loss = recipe.step(model, next(batches), torch.device("cpu"))["loss"]
            assert torch.isfinite(loss)
            loss.backward()
            optimizer.step()
        _check_groups(name, stage, model, before)
        torch.save({"model": model.state_dict()}, out / STATE_FILE)
        upstreams[stage] = out


def test_every_builtin_training_stage_has_its_groups():
    trained = {(n, s) for n in BUILTINS for s, d in METHODS[n].stages.items() if d.recipe is not None}
    assert trained == set(GROUPS)


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


def _snapshot_at_epoch_start(recipe, epoch: int, into: dict):
    """``recipe`` whose model and optimiser state are copied into ``into`` as ``epoch``
    (1-based) starts: after a restore, before any step of that epoch."""
    make, chained = recipe.make_optimizer, recipe.epoch_start
    made = []

    def make_optimizer(model):
        made.append(make(model))
        return made[-1]

    def epoch_start(e):
        if e == epoch:
            into["model"] = {k: v.detach().clone() for k, v in recipe.model.state_dict().items()}
            into["optimizer"] = copy.deepcopy(made[-1].state_dict())
        if chained is not None:
            chained(e)

    recipe.make_optimizer, recipe.epoch_start = make_optimizer, epoch_start
    return recipe


def _equal_states(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal_states(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal_states(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_loop_resumes_weights_and_optimiser_state_of_a_real_stage(flare_root, tmp_path):
    """iou_simsiam_seg's pretraining (SimSiam on a Swin encoder, SGD with momentum and a
    fixed-lr predictor group): killed after epoch 1 and resumed in a fresh recipe, its model
    and every optimiser state tensor as epoch 2 starts equal an uninterrupted run's there.
    (tests/test_loop_resume.py holds the GradScaler too; on a CPU it is disabled.)"""
    method = METHODS["iou_simsiam_seg"]

    def recipe(into=None):
        r = method.stages["pretrain"].recipe(_inputs(method, "pretrain", flare_root, tmp_path, epochs=2))
        return _snapshot_at_epoch_start(r, 2, into) if into is not None else r

    whole: dict = {}
    seed_everything(0)
    fit(recipe(whole), LocalRuntime(tmp_path / "whole", device="cpu"))

    class Killed(RuntimeError):
        pass

    seed_everything(0)
    rt = LocalRuntime(tmp_path / "ck", device="cpu")
    first = recipe()
    first.epoch_start = lambda e: (_ for _ in ()).throw(Killed(f"killed at epoch {e}")) if e == 2 else None
    with pytest.raises(Killed, match="killed at epoch 2"):
        fit(first, rt)
    seed_everything(1)  # a fresh process: other initial weights
    resumed: dict = {}
    rt.reports.clear()
    fit(recipe(resumed), rt)
    assert [r["pretrain/epoch"] for r in rt.reports] == [2.0]
    assert whole["optimizer"]["state"], "momentum buffers to compare"
    assert resumed["model"].keys() == whole["model"].keys()
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert _equal_states(resumed["optimizer"], whole["optimizer"])
