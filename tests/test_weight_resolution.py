"""The sweep driver resolves pretrained weights once, into shared storage, before any
trial; a configuration whose weights cannot be had is skipped with the reason."""

from __future__ import annotations

import contextlib

import pytest
import torch

from raysuite import weight_resolution
from raysuite.methods.nn.pretrained import STATE_FILE
from raysuite.plan import POINT, all_points, decode, grid_trials, plan, skipped_points
from raysuite.spec import config_label, load_spec

SPEC = """
name: weights
method: weak_localization
tiny: true
data: {{format: chestxray14, root: {root}, cache_dir: {cache}}}
search:
  grid: {{train.weights: [imagenet, none, {missing}]}}
  repeats: {{train.seed: 2}}
objective: {{metric: val/loc_acc_iou, mode: max, scope: last}}
"""


@pytest.fixture
def spec(tmp_path, cxr14_root, write_spec):
    return load_spec(write_spec(SPEC, root=cxr14_root, missing=tmp_path / "nowhere.pth"))


def test_unavailable_weights_skip_their_configuration_with_the_reason(
    spec, pretrained_cache, tmp_path
):
    resolution = weight_resolution.resolve(spec, str(tmp_path / "storage"))
    skipped = dict((config_label(p), r) for p, r in skipped_points(spec, resolution.reason))
    assert set(skipped) == {
        'train.weights="imagenet"',
        f'train.weights="{tmp_path / "nowhere.pth"}"',
    }
    assert "ResNet18_Weights.IMAGENET1K_V1: not in the cache" in skipped['train.weights="imagenet"']
    assert "no such file" in skipped[f'train.weights="{tmp_path / "nowhere.pth"}"']
    # the grid study runs only the "none" configuration's two repeats
    points = grid_trials(spec, resolution.reason)
    assert len(points) == 2 and {
        decode(spec, {POINT: p})[0]["train.weights"] for p in points
    } == {"none"}
    assert len(all_points(spec)) == 3


def test_weights_are_stored_once_and_every_trial_reads_the_stored_copy(
    spec, pretrained_cache, tmp_path
):
    placed = pretrained_cache.place("resnet18")
    storage = str(tmp_path / "storage")
    first = weight_resolution.resolve(spec, storage)
    (stored,) = first.files.values()
    assert stored.startswith(f"{storage}/weights/resnet18-")
    path = tmp_path / "storage" / "weights" / stored.rsplit("/", 1)[-1] / STATE_FILE
    assert all(torch.equal(torch.load(path)[k], v) for k, v in placed.items())
    stamp = path.stat().st_mtime_ns
    assert (
        weight_resolution.resolve(spec, storage).files == first.files
        and path.stat().st_mtime_ns == stamp
    )
    overrides, repeat = decode(spec, {POINT: grid_trials(spec, first.reason)[0]})
    configs = plan(spec, overrides, repeat, hash_data=False).configs
    assert overrides == {"train.weights": "imagenet"}
    assert first.for_trial(spec, configs) == {"train.weights": stored}

    from raysuite.tune.worker import _inputs

    config = {"method": "weak_localization", "stage": "train", "cfg": configs["train"], "data": {}, "seed": 0,
              "pretrained": {"weights": stored}}  # fmt: skip
    with contextlib.ExitStack() as stack:
        inputs = _inputs(config, stack)
        assert inputs.weights_file("weights", "resnet18") == path
    pretrained_cache.clear()  # a worker never goes back to the library's cache
    with contextlib.ExitStack() as stack:
        assert _inputs(config, stack).weights_file("weights", "resnet18") == path


def test_a_misfit_file_is_refused_before_any_trial(spec, pretrained_cache, tmp_path):
    pretrained_cache.place("resnet18", state=pretrained_cache.state("resnet34"))
    resolution = weight_resolution.resolve(spec, str(tmp_path / "storage"))
    reason = dict((config_label(p), r) for p, r in skipped_points(spec, resolution.reason))[
        'train.weights="imagenet"'
    ]
    assert "does not fit resnet18" in reason and "unexpected" in reason
    assert not (tmp_path / "storage" / "weights").exists()
