"""``batch_size`` is the global batch (the seeds' number): each DDP worker's training loader
draws ``batch_size / world_size`` (``StageInputs.local_batch``), and a spec whose batch does
not split over ``workers_per_trial`` is refused before any trial."""

import dataclasses
import glob

import pytest
import torch

from raysuite.methods import METHODS
from raysuite.methods.base import StageInputs
from raysuite.spec import SpecError, load_spec, smoke
from raysuite.train.loop import STATE_FILE
from raysuite.train.sharding import shard_loader


def _inputs(world_size, rank=0):
    return StageInputs(cfg=object(), data={}, upstream=None, seed=0, rank=rank, world_size=world_size)


@pytest.mark.parametrize(("batch", "world", "local"), [(48, 1, 48), (48, 2, 24), (12, 4, 3), (2, 2, 1)])
def test_local_batch_splits_the_global_batch(batch, world, local):
    assert _inputs(world).local_batch(batch) == local


def test_local_batch_refuses_an_uneven_split_and_a_short_share():
    with pytest.raises(ValueError, match="batch_size 48 .*does not split over 5 DDP workers"):
        _inputs(5).local_batch(48)
    with pytest.raises(ValueError, match="fewer than 2; use at least 4"):
        _inputs(2).local_batch(2, minimum=2)


SPEC = """
name: t
method: weak_localization
data: {format: chestxray14, root: /tmp/x}
stages:
  train: {epochs: 2, batch_size: 48}
  crf: {epochs: 1, batch_size: 48}
search: {}
objective: {metric: val/loc_acc_iou, scope: last}
resources: {workers_per_trial: 2}
"""


def _spec(write_spec, text=SPEC, **replace):
    for old, new in replace.items():
        text = text.replace(old, new)
    return write_spec(text)


def test_even_batches_pass(tmp_path, write_spec):
    load_spec(_spec(write_spec))


@pytest.mark.parametrize(
    ("search", "key"),
    [
        ("{}", "stages.crf.batch_size"),  # the base stage (crf: batch_size 47)
        ("{grid: {crf.batch_size: [48, 45]}}", "search.grid.crf.batch_size[1]"),
        ("{arms: {a: {crf.batch_size: 48}, b: {crf.batch_size: 33}}}", "search.arms.b.crf.batch_size"),
        ("{optuna: {n_trials: 2, space: {crf.batch_size: {choice: [16, 9]}}}}", "search.optuna.space.crf.batch_size"),
        ("{optuna: {n_trials: 2, space: {crf.batch_size: {randint: [16, 32]}}}}", "search.optuna.space.crf.batch_size"),
    ],
)
def test_uneven_batch_is_refused_naming_key_and_world_size(tmp_path, search, key, write_spec):
    crf = "crf: {epochs: 1, batch_size: 47}" if search == "{}" else "crf: {epochs: 1, batch_size: 48}"
    path = _spec(write_spec, **{"search: {}": f"search: {search}", "crf: {epochs: 1, batch_size: 48}": crf})
    with pytest.raises(SpecError, match="is the global batch and must split evenly over workers_per_trial=2 DDP workers") as err:
        load_spec(path)
    assert key in str(err.value) and "workers_per_trial=2" in str(err.value)


def test_a_base_value_every_configuration_overrides_is_not_checked(tmp_path, write_spec):
    path = _spec(write_spec, **{"batch_size: 48}\nsearch: {}": "batch_size: 47}\nsearch: {grid: {crf.batch_size: [24, 48]}}"})
    load_spec(path)


def test_one_worker_takes_any_batch(tmp_path, write_spec):
    load_spec(_spec(write_spec, **{"workers_per_trial: 2": "workers_per_trial: 1", "batch_size: 48}\nsearch": "batch_size: 47}\nsearch"}))


def test_job_stages_run_in_one_worker_and_are_not_checked(tmp_path, write_spec):
    text = """
    name: t
    method: one_case_cascade
    data: {format: siim_acr, root: /tmp/x}
    stages: {predict: {batch_size: 15}}
    objective: {metric: val/dice_per_image, scope: last}
    resources: {workers_per_trial: 2}
    """
    load_spec(_spec(write_spec, text))


def test_training_stages_with_a_batch_are_the_checked_ones():
    checked = {
        (name, stage)
        for name, method in METHODS.items()
        for stage, d in method.stages.items()
        if d.recipe is not None and d.job is None and "batch_size" in d.config.model_fields
    }
    assert checked == {
        ("iou_simsiam_seg", "pretrain"), ("iou_simsiam_seg", "finetune"),
        ("simclr_detection", "pretrain"), ("simclr_detection", "finetune"),
        ("weak_localization", "train"), ("weak_localization", "crf"),
        ("one_case_cascade", "classifier"), ("one_case_cascade", "segmenter"),
        ("genesis_cls", "pretrain"), ("genesis_cls", "finetune"),
    }  # fmt: skip


@pytest.mark.parametrize("path", sorted(glob.glob("sweeps/*.yaml")))
def test_shipped_sweeps_and_their_smoke_runs_split_evenly(path):
    spec = load_spec(path)
    spec.resources.workers_per_trial = 4  # smoke caps workers at 2
    assert smoke(spec).resources.workers_per_trial == 2


@pytest.mark.parametrize("name", sorted(METHODS))
def test_training_loaders_draw_the_per_worker_share(name, method_data, tmp_path):
    """Each training stage's recipe built for rank 0 of 2 workers (TINY + smoke sizes), its
    untrained weights the next stage's upstream checkpoint."""
    method = METHODS[name]
    overrides = {stage: dict(method.smoke.get(stage, {})) for stage in method.stages}
    upstreams = {}
    for stage, d in method.stages.items():
        if d.recipe is None:
            continue
        inputs = method.tiny_inputs(stage, method_data(method), overrides, dict(upstreams))
        recipe = d.recipe(dataclasses.replace(inputs, world_size=2))
        (tmp_path / stage).mkdir()
        torch.save({"model": recipe.model.state_dict()}, tmp_path / stage / STATE_FILE)
        upstreams[stage] = tmp_path / stage
        loader = recipe.train_loader
        if (name, stage) == ("simclr_detection", "pretrain"):  # capped by a small pool: 2 per worker at least
            assert 2 <= loader.batch_size <= inputs.cfg.batch_size // 2
        else:
            assert loader.batch_size == inputs.cfg.batch_size // 2, stage
        sharded = shard_loader(loader, 0, 2, seed=3)  # what RayRuntime.prepare_loader hands the loop
        assert sharded.batch_size == loader.batch_size and len(sharded) > 0
        if (name, stage) == ("iou_simsiam_seg", "pretrain"):  # max_slices_per_epoch: 64 per epoch
            assert len(sharded.sampler) == inputs.cfg.max_slices_per_epoch // 2 == 32
        if (name, stage) == ("simclr_detection", "finetune"):  # the repeat-factor sampler shards itself
            assert sharded is loader
