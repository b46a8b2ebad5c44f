"""Each method's declared metric keys (``Method.metrics``, which a spec's objective is
checked against) are the keys its stages report: every stage is built on the method's
synthetic data (TINY and smoke presets) and its epoch_end, evaluation and test scores are
computed once, its jobs run on the untrained models' outputs."""

import pytest
import torch

from raysuite.methods import METHODS
from raysuite.methods.base import ARTIFACT
from raysuite.train.loop import STATE_FILE, seed_everything

CPU = torch.device("cpu")
# stage overrides that make a stage report every key it can (a segmenter logs the terms of
# the losses weighted above 0), or keep a job small
OVERRIDES = {
    "one_case_cascade": {
        "segmenter": {f"{name}_weight": 1.0 for name in ("jaccard", "dice", "bce", "focal", "tversky", "combo")},
        "posthoc": {"pixel_thresholds": [0.5], "cls_thresholds": [0.5], "min_areas": [0]},
    },
}


def _inputs(method, stage, data, upstreams):
    overrides = {name: {**method.smoke.get(name, {})} for name in method.stages}
    for name, extra in OVERRIDES.get(method.name, {}).items():
        overrides[name].update(extra)
    return method.tiny_inputs(stage, data, overrides, upstreams)


def _recipe_keys(recipe) -> set[str]:
    """What the epoch loop reports of ``recipe`` beyond LOOP_KEYS, computed once."""
    keys = set()
    recipe.make_optimizer(recipe.model)  # as the loop does first: epoch_start may set its groups
    if recipe.epoch_start is not None:
        recipe.epoch_start(1)
    if recipe.epoch_end is not None:
        out = recipe.step(recipe.model, next(iter(recipe.train_loader)), CPU)
        outputs = [{k: v.detach().float().item() if torch.is_tensor(v) and v.numel() == 1 else v for k, v in out.items()}]
        keys |= {f"{recipe.stage}/{k}" for k in recipe.epoch_end(outputs)}
    for evaluation in (recipe.evaluate, recipe.test):
        if evaluation is not None:
            keys |= set(evaluation(recipe.model, CPU))
    if recipe.monitor:
        keys.add(f"{recipe.monitor}_best")
    return keys


def _reported(method, data, tmp_path) -> dict[str, set[str]]:
    """Per stage, the metric keys it reported (artifacts aside), each stage's output (its
    untrained model, or its job's files) the next one's upstream."""
    seed_everything(0)
    reported, outputs = {}, {}
    for stage, stage_def in method.stages.items():
        upstreams = {name: outputs[name] for name in stage_def.inputs}
        inputs = _inputs(method, stage, data, upstreams)
        out = tmp_path / stage
        out.mkdir()
        if stage_def.job is not None:
            keys = set(stage_def.job(inputs, out))
        else:
            recipe = stage_def.recipe(inputs)
            keys = _recipe_keys(recipe)
            torch.save({"model": recipe.model.state_dict()}, out / STATE_FILE)
        outputs[stage] = out
        reported[stage] = {k for k in keys if not k.startswith(ARTIFACT)}
    return reported


def _per_class_family(key: str) -> str:
    """``val/auc/Nodule`` -> ``val/auc``; "" for a key of no per-class family."""
    family = key.rpartition("/")[0]
    return family if "/" in family else ""


@pytest.mark.parametrize("name", sorted(METHODS))
def test_declared_metric_keys_are_the_reported_ones(name, method_data, tmp_path):
    method = METHODS[name]
    reported = _reported(method, method_data(method), tmp_path)
    for stage, keys in reported.items():
        declared = set(method.metrics.get(stage, ()))
        assert not keys - declared, f"{stage} reports undeclared keys {sorted(keys - declared)}"
        families = {_per_class_family(k) for k in keys} - {""}
        # per-class keys (val/auc/<class>) exist for the classes the tiny data holds
        missing = {k for k in declared - keys if _per_class_family(k) not in families}
        assert not missing, f"{stage} declares keys it never reports: {sorted(missing)}"
