"""one_case_cascade (seed 004): arms and folds in the spec, stage keys that let a threshold
change re-use trained models and saved predictions, patient folds, the fastai one-cycle
schedule, and a TINY cascade that learns and beats an untrained pair."""

import textwrap

import numpy as np
import pytest
import torch

from raysuite.methods import METHODS
from raysuite.methods import one_case_cascade as occ
from raysuite.plan import POINT, decode, grid_config_count, plan
from raysuite.spec import SpecError, load_spec
from raysuite.train.loop import STATE_FILE, fit, seed_everything
from raysuite.train.runtime import LocalRuntime

METHOD = METHODS["one_case_cascade"]

SPEC = """
name: t
method: one_case_cascade
data: {{format: siim_acr, root: {root}, cache_dir: {cache}}}
stages:
  posthoc: {{pixel_thresholds: [0.3, 0.5]}}
search:
  arms:
    one_case: {{classifier.enabled: true, segmenter.positives_only: true}}
    baseline: {{classifier.enabled: false, segmenter.positives_only: false}}
  repeats: {{fold: 3}}
objective: {{metric: val/dice_per_image, scope: last}}
tiny: true
"""


@pytest.fixture
def spec_path(tmp_path, siim_root):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(SPEC.format(root=siim_root, cache=tmp_path / "cache")))
    return path


def _plans(spec):
    return [plan(spec, *decode(spec, {POINT: i})) for i in range(grid_config_count(spec))]


def test_arms_times_folds_and_their_labels(spec_path):
    spec = load_spec(spec_path)
    plans = _plans(spec)
    assert len(plans) == 6
    assert [p.label for p in plans[::3]] == ["one_case", "baseline"]
    assert [p.fold for p in plans[:3]] == [0, 1, 2]
    assert plans[0].configs["segmenter"]["positives_only"] and not plans[3].configs["segmenter"]["positives_only"]
    assert not plans[3].configs["classifier"]["enabled"]
    assert len({p.config_id for p in plans}) == 2  # folds are repeats of one configuration


def test_threshold_change_keeps_model_and_prediction_keys(spec_path):
    spec = load_spec(spec_path)
    base = plan(spec, {"arm": "one_case"}, {"fold": 0})
    changed = plan(spec, {"arm": "one_case", "posthoc.min_areas": [0, 10], "posthoc.tta": ["none"]}, {"fold": 0})
    assert {s: base.keys[s] for s in ("classifier", "segmenter", "predict")} == {
        s: changed.keys[s] for s in ("classifier", "segmenter", "predict")
    }
    assert base.keys["posthoc"] != changed.keys["posthoc"]
    # the two models are independent: a classifier change keeps the segmenter's key
    lr = plan(spec, {"arm": "one_case", "classifier.lr": 0.01}, {"fold": 0})
    assert lr.keys["segmenter"] == base.keys["segmenter"]
    assert lr.keys["classifier"] != base.keys["classifier"] and lr.keys["predict"] != base.keys["predict"]
    other_fold = plan(spec, {"arm": "one_case"}, {"fold": 1})
    assert all(other_fold.keys[s] != base.keys[s] for s in base.keys)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("repeats: {fold: 3}", "repeats: {fold: 6}"), "search.repeats.fold"),
        (("classifier.enabled: false, segmenter.positives_only: false", "classifier.enabled: false"), "search.arms.baseline"),
        (("segmenter.positives_only: true}", "segmenter.positive_only: true}"), "search.arms.one_case.segmenter.positive_only"),
        (("pixel_thresholds: [0.3, 0.5]", "pixel_thresholds: [1.3]"), "stages.posthoc.pixel_thresholds"),
    ],
)
def test_bad_arms_and_folds_are_refused_with_their_key(spec_path, edit, key):
    spec_path.write_text(spec_path.read_text().replace(*edit))
    with pytest.raises(SpecError) as err:
        load_spec(spec_path)
    assert err.value.key == key


def test_fold_repeats_need_a_cross_validating_method(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""
        name: t
        method: iou_simsiam_seg
        data: {format: flare22, root: /tmp/x}
        search: {repeats: {fold: 2}}
        objective: {metric: val/dice}
    """))
    with pytest.raises(SpecError, match="does not cross-validate"):
        load_spec(path)


def test_folds_split_patients_and_hold_out_the_test_split(siim_root, tmp_path):
    data = {"format": "siim_acr", "root": str(siim_root), "cache_dir": str(tmp_path / "cache")}
    tables = [occ.splits(data, fold) for fold in range(occ.FOLDS)]
    first = tables[0]
    test = set(first.sample_id[first.role == "test"])
    assert test and all(set(t.sample_id[t.role == "test"]) == test for t in tables)
    vals = [set(t.sample_id[t.role == "val"]) for t in tables]
    assert set().union(*vals) == set(first.sample_id) - test and sum(map(len, vals)) == len(first) - len(test)
    for t in tables:
        assert not set(t.patient_key[t.role == "val"]) & set(t.patient_key[t.role == "train"])
        assert not set(t.patient_key[t.role == "test"]) & set(t.patient_key[t.role != "test"])
    assert first.positive.any() and not first.positive.all()
    assert len(first) == 64  # the 16 unlabelled stage-1 test images are left out


def test_one_cycle_matches_fastai_shape():
    peak, total = 1e-3, 100
    lrs = [occ.one_cycle(s, total, peak) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 25)
    assert max(lrs) == pytest.approx(peak) and int(np.argmax(lrs)) == 30
    assert lrs[-1] < peak / 1000 and all(a >= b for a, b in zip(lrs[30:], lrs[31:], strict=False))


def _inputs(stage, data, upstreams=None, **extra):
    return METHOD.tiny_inputs(stage, data, {stage: extra}, upstreams)


def _cascade_scores(data, checkpoints, out):
    pred = out / "pred"
    pred.mkdir(parents=True)
    METHOD.stages["predict"].job(_inputs("predict", data, checkpoints), pred)
    return METHOD.stages["posthoc"].job(_inputs("posthoc", data, {"predict": pred}), out)


def test_tiny_cascade_learns_and_beats_an_untrained_pair(siim_root, tmp_path):
    data = {"format": "siim_acr", "root": str(siim_root), "cache_dir": str(tmp_path / "cache")}
    seed_everything(0)
    untrained = {}
    for stage, build in (("classifier", occ.classifier_model), ("segmenter", occ.segmenter_model)):
        folder = tmp_path / f"untrained-{stage}"
        folder.mkdir()
        torch.save({"model": build(_inputs(stage, data).cfg).state_dict()}, folder / STATE_FILE)
        untrained[stage] = folder
    before = _cascade_scores(data, untrained, tmp_path / "before")

    trained = {}
    for stage, epochs in (("classifier", 6), ("segmenter", 12)):
        runtime = LocalRuntime(tmp_path / f"ck-{stage}")
        fit(METHOD.stages[stage].recipe(_inputs(stage, data, epochs=epochs, cutout_from_epoch=4)
                                        if stage == "classifier" else _inputs(stage, data, epochs=epochs)), runtime)  # fmt: skip
        losses = [r[f"{stage}/loss"] for r in runtime.reports]
        assert losses[-1] < losses[0], stage
        trained[stage] = runtime.checkpoints[-1]
    after = _cascade_scores(data, trained, tmp_path / "after")

    assert after["val/cls_auc"] > 0.75
    assert after["val/dice_per_image"] > before["val/dice_per_image"] + 0.1
    # the test split holds a dozen images, most of them empty (which an untrained pair
    # already scores 1 on): better, by a margin that does not hang on which patients the salt
    # puts there
    assert after["test/dice_per_image"] > before["test/dice_per_image"] + 0.02
    assert after["val/dice"] > 0.5 > before["val/dice"]
    table = after["artifact/posthoc/val_search.csv"].splitlines()
    assert len(table) == 1 + after["posthoc/combinations"] == 1 + 19 * 9 * 4 * 2
    assert after["val/dice_per_image"] >= after["val/tta/dice_per_image"] - 1e-12
    assert after["val/dice_per_image"] >= after["val/argmax/dice_per_image"] - 1e-12


def test_frozen_epochs_keep_loaded_encoder_weights(siim_root, tmp_path):
    """Table 4.2: with an ImageNet file the encoder stays fixed for ``frozen_epochs``."""
    import timm

    data = {"format": "siim_acr", "root": str(siim_root), "cache_dir": str(tmp_path / "cache")}
    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    inputs = _inputs("segmenter", data, epochs=2, frozen_epochs=1, weights=str(weights), max_train_images=8)
    runtime = LocalRuntime(tmp_path / "ck")
    fit(METHOD.stages["segmenter"].recipe(inputs), runtime)
    loaded = torch.load(weights)
    states = [torch.load(c / STATE_FILE, weights_only=False)["model"] for c in runtime.checkpoints]
    key = "encoder.layer1.0.conv1.weight"
    assert torch.equal(states[0][key], loaded[key.removeprefix("encoder.")])
    assert torch.equal(states[0]["encoder.bn1.running_mean"], loaded["bn1.running_mean"])
    assert not torch.equal(states[1][key], loaded[key.removeprefix("encoder.")])
    assert not torch.equal(states[0]["head.weight"], states[1]["head.weight"])


def test_arms_beside_optuna_run_as_their_own_study():
    from raysuite.tune.sweep import _studies

    spec = load_spec("sweeps/one_case_search.yaml")
    assert _studies(spec) == ["grid", "optuna"] and not spec.search.grid
