"""one_case_cascade (seed 004): arms and folds in the spec, stage keys that let a threshold
change re-use trained models and saved predictions, patient folds, fastai v1's one-cycle
schedule (two cycles for the frozen then unfrozen U-Net, cyclic momentum), decoupled weight
decay, ImageNet starts, Table 5.1's rows, and a TINY cascade that learns and beats an
untrained pair."""

import textwrap

import numpy as np
import pytest
import torch

from raysuite.methods import METHODS
from raysuite.methods import one_case_cascade as occ
from raysuite.plan import POINT, all_points, decode, grid_trials, plan
from raysuite.spec import SpecError, load_spec, resolve_stage_configs
from raysuite.train.loop import STATE_FILE, fit, seed_everything
from raysuite.train.optim import OneCycle, cycle_of
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
    return [plan(spec, *decode(spec, {POINT: point})) for point in grid_trials(spec)]


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
    with pytest.raises(SpecError, match=r"spec\.yaml: (search|stages)\.") as err:
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


def test_one_cycle_is_fastai_v1s_by_hand():
    """fastai v1 OneCycleScheduler: cos from peak/25 to peak over int(0.3 n) steps, then
    cos down to peak/(25e4); momentum cos .95 -> .85, then back (§3.6.3)."""
    cycle = OneCycle(1e-3)
    total = 100  # warm-up: 30 steps
    assert cycle.lr(0, total) == pytest.approx(4e-5)
    assert cycle.lr(15, total) == pytest.approx((4e-5 + 1e-3) / 2)  # cos midpoint
    assert cycle.lr(30, total) == pytest.approx(1e-3)
    assert cycle.lr(65, total) == pytest.approx((1e-3 + 4e-9) / 2)
    assert cycle.lr(100, total) == pytest.approx(4e-9)
    assert [cycle.momentum(s, total) for s in (0, 15, 30, 65, 100)] == pytest.approx([0.95, 0.90, 0.85, 0.90, 0.95])


def test_cycles_follow_each_other():
    assert cycle_of(59, 180, (6, 12)) == (0, 59, 60)
    assert cycle_of(60, 180, (6, 12)) == (1, 0, 120)
    assert cycle_of(179, 180, (6, 12)) == (1, 119, 120)
    assert cycle_of(5, 18, (18,)) == (0, 5, 18)
    with pytest.raises(ValueError, match=r"cycles need positive epoch counts, got \(0, 10\)"):
        cycle_of(0, 10, (0, 10))


def _inputs(stage, data, upstreams=None, **extra):
    return METHOD.tiny_inputs(stage, data, {stage: extra}, upstreams)


def _cascade_scores(data, checkpoints, out):
    """Predictions, then the wider post-hoc grid (beyond the thesis: classifier thresholds
    and minimum areas too; a TINY classifier's probabilities are not calibrated at 0.5)."""
    from raysuite.methods.nn.posthoc import default_space

    pred = out / "pred"
    pred.mkdir(parents=True)
    METHOD.stages["predict"].job(_inputs("predict", data, checkpoints), pred)
    space = default_space()
    wide = {"pixel_thresholds": list(space["pixel_threshold"].values), "cls_thresholds": list(space["cls_threshold"].values),
            "min_areas": list(space["min_area"].values)}  # fmt: skip
    return METHOD.stages["posthoc"].job(_inputs("posthoc", data, {"predict": pred}, **wide), out)


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
    # the wider search is the Searched row; the thesis' Raw row gates at 0.5, no minimum area
    assert after["val/search/dice_per_image"] == after["val/dice_per_image"] >= after["val/raw/dice_per_image"]


@pytest.mark.parametrize("train_bn", [True, False])
def test_frozen_epochs_keep_loaded_encoder_weights(siim_root, tmp_path, train_bn):
    """Table 4.2: with ImageNet weights the encoder's weights stay fixed for
    ``frozen_epochs``; its BatchNorm trains then as in fastai v1 (``train_bn``) unless off."""
    import timm

    data = {"format": "siim_acr", "root": str(siim_root), "cache_dir": str(tmp_path / "cache")}
    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    inputs = _inputs("segmenter", data, epochs=2, frozen_epochs=1, weights=str(weights), max_train_images=8,
                     train_bn=train_bn)  # fmt: skip
    runtime = LocalRuntime(tmp_path / "ck")
    fit(METHOD.stages["segmenter"].recipe(inputs), runtime)
    loaded = torch.load(weights)
    states = [torch.load(c / STATE_FILE, weights_only=False)["model"] for c in runtime.checkpoints]
    key = "encoder.layer1.0.conv1.weight"
    assert torch.equal(states[0][key], loaded[key.removeprefix("encoder.")])
    for bn in ("bn1.running_mean", "bn1.weight"):
        assert torch.equal(states[0][f"encoder.{bn}"], loaded[bn]) is not train_bn, bn
    assert not torch.equal(states[1][key], loaded[key.removeprefix("encoder.")])
    assert not torch.equal(states[0]["head.weight"], states[1]["head.weight"])


def _segmenter_recipe(data, tmp_path, **extra):
    import timm

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    return METHOD.stages["segmenter"].recipe(_inputs("segmenter", data, weights=str(weights), **extra))


def test_segmenter_trains_two_one_cycles_frozen_then_unfrozen(siim_root, tmp_path):
    """fastai's fit_one_cycle(6) on the frozen encoder, unfreeze, fit_one_cycle(12): the
    schedule restarts at epoch 7 and unfreezing starts a fresh optimiser state."""
    data = {"format": "siim_acr", "root": str(siim_root), "cache_dir": str(tmp_path / "cache")}
    recipe = _segmenter_recipe(data, tmp_path, epochs=18, frozen_epochs=6, lr=1e-3)
    optimizer = recipe.make_optimizer(recipe.model)
    per_epoch = 10
    total = 18 * per_epoch
    lrs = [recipe.lr_at(s, total) for s in range(total)]
    assert lrs[0] == pytest.approx(4e-5) and lrs[6 * per_epoch] == pytest.approx(4e-5)  # restart
    assert lrs[int(60 * 0.3)] == pytest.approx(1e-3) and lrs[60 + int(120 * 0.3)] == pytest.approx(1e-3)
    assert lrs[59] < 1e-5 and lrs[-1] < 1e-6
    recipe.lr_at(60, total)
    assert optimizer.param_groups[1]["betas"] == pytest.approx((0.95, 0.99))  # fastai's Adam betas, cycled beta1
    recipe.lr_at(60 + 36, total)
    assert optimizer.param_groups[1]["betas"][0] == pytest.approx(0.85)

    recipe.epoch_start(1)
    assert optimizer.param_groups[0]["fixed_lr"] and optimizer.param_groups[0]["lr"] == 0.0
    frozen = {id(p) for p in optimizer.param_groups[0]["params"]}
    bn = {id(p) for m in recipe.model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert not frozen & bn and id(recipe.model.encoder.conv1.weight) in frozen  # train_bn
    recipe.model.train()
    assert recipe.model.encoder.bn1.training  # fastai v1's train_bn keeps BN training
    for p in recipe.model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert optimizer.state
    recipe.epoch_start(7)
    assert not optimizer.state and not optimizer.param_groups[0]["fixed_lr"]


def test_no_frozen_cycle_without_pretrained_weights(siim_root, tmp_path):
    data = {"format": "siim_acr", "root": str(siim_root), "cache_dir": str(tmp_path / "cache")}
    recipe = METHOD.stages["segmenter"].recipe(_inputs("segmenter", data, epochs=18, frozen_epochs=6, lr=1e-3))
    recipe.make_optimizer(recipe.model)
    recipe.epoch_start(1)
    lrs = [recipe.lr_at(s, 180) for s in range(180)]
    assert int(np.argmax(lrs)) == 54 and lrs[60] > 1e-4  # one cycle of 18 epochs


def test_weight_decay_is_decoupled_by_hand(siim_root, tmp_path):
    """fastai's true_wd: p <- p (1 - lr wd) beside the Adam/RAdam step. With zero gradients
    the moments stay 0, so ten steps leave p (1 - 0.1 * 0.01)^10 exactly; an L2 penalty in
    the gradient would instead move p by about lr per step once Adam normalises it."""
    data = {"format": "siim_acr", "root": str(siim_root), "cache_dir": str(tmp_path / "cache")}
    for stage in ("classifier", "segmenter"):
        recipe = METHOD.stages[stage].recipe(_inputs(stage, data, weight_decay=0.01))
        optimizer = recipe.make_optimizer(recipe.model)
        params = list(recipe.model.parameters())
        before = [p.detach().clone() for p in params]
        for group in optimizer.param_groups:
            group["lr"] = 0.1
        for _ in range(10):
            for p in params:
                p.grad = torch.zeros_like(p)
            optimizer.step()
        for p, b in zip(params, before, strict=True):
            torch.testing.assert_close(p.detach(), b * 0.999**10, msg=stage)


def test_arms_start_from_imagenet_and_load_those_tensors(siim_root, tmp_path, pretrained_cache):
    """§4.5: both models start from ImageNet (``weights: imagenet`` resolves through
    torchvision's cache, placed here as the library would after its download)."""
    data = {"format": "siim_acr", "root": str(siim_root), "cache_dir": str(tmp_path / "cache")}
    state = pretrained_cache.place("resnet18")
    classifier = METHOD.stages["classifier"].recipe(_inputs("classifier", data, weights="imagenet")).model
    segmenter = METHOD.stages["segmenter"].recipe(_inputs("segmenter", data, weights="imagenet")).model
    for key in ("conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(classifier.state_dict()[key], state[key])
        assert torch.equal(segmenter.encoder.state_dict()[key], state[key])
    assert not torch.equal(classifier.fc.weight[:1], state["fc.weight"][:1].expand_as(classifier.fc.weight))
    scratch = METHOD.stages["classifier"].recipe(_inputs("classifier", data)).model  # TINY: weights none
    assert not torch.equal(scratch.conv1.weight, state["conv1.weight"])


def test_the_seeds_archs_fit_torchvisions_imagenet_files(pretrained_cache):
    """The thesis' ResNeXt-50 32x4d and ResNet-34 from torchvision's ImageNet files (the
    weights fastai v1 used) fit timm's models, head aside."""
    from raysuite.methods.nn import pretrained

    for arch in ("resnext50_32x4d", "resnet34"):
        state = pretrained_cache.place(arch)
        path = pretrained.local_file(arch, "imagenet")
        pretrained.check_fit(arch, path)
        if arch == "resnet34":
            model = occ.segmenter_model(occ.SegmenterConfig(), path).encoder
        else:
            model = occ.classifier_model(occ.ClassifierConfig(), path)
        assert torch.equal(model.state_dict()["layer3.2.conv2.weight"], state["layer3.2.conv2.weight"])


def test_weights_that_do_not_fit_are_refused(siim_root, tmp_path, pretrained_cache):
    import timm

    from raysuite.methods.nn.pretrained import WeightsUnavailable

    data = {"format": "siim_acr", "root": str(siim_root), "cache_dir": str(tmp_path / "cache")}
    other = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), other)
    with pytest.raises(ValueError, match=str(other)):
        METHOD.stages["segmenter"].recipe(_inputs("segmenter", data, weights=str(other)))
    with pytest.raises(WeightsUnavailable, match="not in the cache"):  # nothing placed: never trained from scratch
        METHOD.stages["classifier"].recipe(_inputs("classifier", data, weights="imagenet"))


def _shipped_configs(path="sweeps/one_case_vs_baseline.yaml"):
    """Each arm's resolved stage configs of a shipped sweep (no data needed)."""
    spec = load_spec(path)
    return {p["arm"]: resolve_stage_configs(spec, p, where="search") for p in all_points(spec)}


def test_pretrained_needs_follow_the_arm():
    needs = {arm: METHOD.pretrained(configs) for arm, configs in _shipped_configs().items()}
    assert [(n.key, n.arch) for n in needs["one_case"]] == [
        ("classifier.weights", "resnext50_32x4d"), ("segmenter.weights", "resnet34"),
    ]  # fmt: skip
    assert [(n.key, n.arch) for n in needs["baseline"]] == [("segmenter.weights", "resnet34")]


def test_compared_arms_differ_only_in_what_is_compared():
    """The baseline and One Case get the same training, weights, prediction and post-hoc
    search; they differ in the classifier gate and the U-Net's training population."""
    by_arm = _shipped_configs()
    one, base = by_arm["one_case"], by_arm["baseline"]
    assert {k: v for k, v in one["segmenter"].items() if base["segmenter"][k] != v} == {"positives_only": True}
    assert {k: v for k, v in one["classifier"].items() if base["classifier"][k] != v} == {"enabled": True}
    assert one["predict"] == base["predict"] and one["posthoc"] == base["posthoc"]
    assert one["segmenter"]["weights"] == "imagenet" and one["classifier"]["weights"] == "imagenet"


def _planted_predictions():
    """4 images of 8x8, every image called abnormal by the classifier (0.9):
    0: a 4x4 pneumothorax predicted at 0.8; 1: empty, a 2-pixel false positive at 0.9;
    2: empty, nothing predicted; 3: a 3x3 pneumothorax predicted at 0.7."""
    from raysuite.methods.nn import posthoc

    truth = np.zeros((4, 8, 8), bool)
    prob = np.zeros((4, 8, 8))
    truth[0, :4, :4], prob[0, :4, :4] = True, 0.8
    prob[1, 7, 6:] = 0.9
    truth[3, 4:7, 4:7], prob[3, 4:7, 4:7] = True, 0.7
    seg = posthoc.quantise(np.stack([prob, prob], 1))  # flip-equivariant: TTA changes nothing
    return posthoc.Predictions(seg=seg, truth=truth, cls=np.full((4, 2), 0.9, np.float32))


def test_table_5_1_rows_are_the_thesis_and_the_wider_search_is_apart(tmp_path):
    """Raw: the pixel threshold only (gate 0.5, no minimum area); TTA: the same on the flip;
    a minimum-area search is the extra "Searched (beyond the thesis)" row."""
    import io

    import pandas as pd

    from raysuite.methods.nn import posthoc

    pred = _planted_predictions()
    for split in ("val", "test"):
        posthoc.save_predictions(tmp_path / f"{split}.npz", pred)
    thresholds = [0.5, 0.75, 0.85, 0.95]
    out = tmp_path / "out"
    out.mkdir()
    inputs = METHOD.tiny_inputs("posthoc", {}, {"posthoc": {"pixel_thresholds": thresholds, "min_areas": [0, 4]}},
                                {"predict": tmp_path})  # fmt: skip
    metrics = METHOD.stages["posthoc"].job(inputs, out)
    # by hand, Dice per image of images 0..3 at each threshold (no area filter):
    # 0.5: 1, 0 (the false positive), 1, 1 -> .75; 0.75: 1, 0, 1, 0 -> .5; 0.85: 0, 0, 1, 0 -> .25;
    # 0.95: 0, 1, 1, 0 -> .5. Raw picks 0.5. A minimum area of 4 removes the false positive: 1.
    assert metrics["val/raw/dice_per_image"] == pytest.approx(0.75)
    assert metrics["val/tta/dice_per_image"] == pytest.approx(0.75)
    assert metrics["val/argmax/dice_per_image"] == pytest.approx(0.75)
    assert metrics["val/search/dice_per_image"] == pytest.approx(1.0) == metrics["val/dice_per_image"]
    assert metrics["posthoc/min_area"] == 4
    table = pd.read_csv(io.StringIO(metrics["artifact/posthoc/table_5_1.csv"]))
    rows = table[table.split == "val"].set_index("row")
    from raysuite.methods.one_case_cascade_posthoc import SEARCHED

    assert list(rows.index) == ["ArgMax", "Raw", "TTA", SEARCHED]
    raw = rows.loc["Raw"]
    assert (raw.pixel_threshold, raw.cls_threshold, raw.min_area, raw.tta) == (0.5, 0.5, 0, "none")
    assert rows.loc["TTA", "tta"] == "flip" and rows.loc["TTA", "min_area"] == 0
    assert rows.loc[SEARCHED, "min_area"] == 4
    # 4 thresholds x 2 areas x 2 TTA modes x the one classifier threshold; only 0.5 with the
    # area filter scores 1, under both TTA modes (flip-equivariant): the tie goes to "none"
    assert metrics["posthoc/combinations"] == 16
    assert (metrics["posthoc/pixel_threshold"], metrics["posthoc/cls_threshold"], metrics["posthoc/tta_flip"]) == (0.5, 0.5, 0.0)
    search = pd.read_csv(io.StringIO(metrics["artifact/posthoc/val_search.csv"]))
    assert search.iloc[0][["tta", "pixel_threshold", "min_area", "dice_per_image"]].tolist() == ["none", 0.5, 4, 1.0]
    assert search.iloc[1][["tta", "pixel_threshold", "min_area", "dice_per_image"]].tolist() == ["flip", 0.5, 4, 1.0]
    assert metrics["test/dice_per_image"] == 1.0 and metrics["test/raw/dice_per_image"] == pytest.approx(0.75)
    assert metrics["val/cls_f1"] == pytest.approx(2 * 0.5 / 1.5)  # all 4 called abnormal, 2 are: precision 1/2


def test_arms_beside_optuna_run_as_their_own_study():
    from raysuite.tune.sweep import studies

    spec = load_spec("sweeps/one_case_search.yaml")
    assert studies(spec) == ["grid", "optuna"] and not spec.search.grid


def _posthoc_inputs(tmp_path, pred, **cfg):
    from raysuite.methods.nn import posthoc

    src = tmp_path / "predict"
    src.mkdir(exist_ok=True)
    for split in ("val", "test"):
        posthoc.save_predictions(src / f"{split}.npz", pred)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return METHOD.tiny_inputs("posthoc", {}, {"posthoc": cfg}, {"predict": src}), out


def test_posthoc_job_searches_through_the_searcher_it_is_given(tmp_path):
    """The job hands its knobs to ``inp.posthoc_search``: the config's lists as Choices in
    evaluate's order (grid) or its ranges (Optuna), maximising dice_per_image, seeded by the
    stage seed; an Optuna request outside a sweep (no searcher) is refused."""
    import dataclasses

    from raysuite.methods import knobs
    from raysuite.tune.posthoc_search import search

    calls = []

    def recording(evaluate, space, objective, mode, n_trials, seed):
        calls.append((dict(space), objective, mode, n_trials, seed))
        return search(evaluate, space, objective, mode, n_trials, seed)

    inputs, out = _posthoc_inputs(tmp_path, _planted_predictions(), pixel_thresholds=[0.5, 0.75], seed=4)
    grid = METHOD.stages["posthoc"].job(dataclasses.replace(inputs, posthoc_search=recording), out)
    assert grid == METHOD.stages["posthoc"].job(inputs, out)  # the fallback grid gives the same
    space, objective, mode, n_trials, seed = calls[0]
    assert list(space) == ["tta", "pixel_threshold", "cls_threshold", "min_area"]
    assert space["pixel_threshold"] == knobs.Choice((0.5, 0.75)) and space["tta"] == knobs.Choice(("none", "flip"))
    assert (objective, mode, n_trials, seed) == ("dice_per_image", "max", None, 4)

    inputs, out = _posthoc_inputs(tmp_path, _planted_predictions(), search="optuna", optuna_trials=7,
                                  pixel_threshold_range=(0.4, 0.9), min_area_range=(0, 8))  # fmt: skip
    with pytest.raises(ValueError, match=r"Optuna post-hoc search \(n_trials=7\) runs only with the sweep's searcher"):
        METHOD.stages["posthoc"].job(inputs, out)
    optuna = METHOD.stages["posthoc"].job(dataclasses.replace(inputs, posthoc_search=recording), out)
    space, _, _, n_trials, _ = calls[1]
    assert space["pixel_threshold"] == knobs.FloatRange(0.4, 0.9) and space["min_area"] == knobs.IntRange(0, 8)
    assert space["cls_threshold"] == knobs.FloatRange(0.01, 0.99) and n_trials == 7
    assert optuna["posthoc/combinations"] == 7 and 0.4 <= optuna["posthoc/pixel_threshold"] <= 0.9


def test_posthoc_job_without_a_classifier_searches_no_classifier_threshold(tmp_path):
    import dataclasses
    import math

    from raysuite.methods.knobs import grid_search
    from raysuite.methods.nn import posthoc

    planted = _planted_predictions()
    spaces = []

    def recording(evaluate, space, objective, mode, n_trials, seed):
        spaces.append(list(space))
        return grid_search(evaluate, space, objective, mode, n_trials, seed)

    inputs, out = _posthoc_inputs(tmp_path, posthoc.Predictions(seg=planted.seg, truth=planted.truth),
                                  pixel_thresholds=[0.5, 0.75], cls_thresholds=[0.3, 0.5])  # fmt: skip
    metrics = METHOD.stages["posthoc"].job(dataclasses.replace(inputs, posthoc_search=recording), out)
    assert spaces == [["tta", "pixel_threshold", "min_area"]]
    assert metrics["posthoc/combinations"] == 2 * 2 and math.isnan(metrics["posthoc/cls_threshold"])
    assert "val/cls_auc" not in metrics
    # no gating: the 2-pixel false positive stays at 0.5, which still scores best (0.75)
    assert metrics["val/dice_per_image"] == pytest.approx(0.75)


def test_posthoc_knobs_and_ranges_are_declared():
    from pydantic import ValidationError

    from raysuite.methods.nn import posthoc
    from raysuite.methods.one_case_cascade_posthoc import PosthocConfig

    assert set(METHOD.posthoc_knobs) == set(posthoc.KNOBS) and all(METHOD.posthoc_knobs.values())
    with pytest.raises(ValidationError, match="FloatRange low 0.9 is above high 0.1"):
        PosthocConfig(pixel_threshold_range=(0.9, 0.1))
    with pytest.raises(ValidationError, match="IntRange low 5 is above high 2"):
        PosthocConfig(min_area_range=(5, 2))
