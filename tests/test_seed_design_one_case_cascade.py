"""Seed 004's constants held by the shipped sweeps: a literal table written from the seed's
text (Zidan, "Pneumothorax Segmentation", BSc dissertation, University of Nottingham, 2020),
not from the code; every other difference from the seed is in the ledger."""

import re

import pytest

from raysuite.departures import departures_of
from raysuite.methods import METHODS
from raysuite.methods import one_case_cascade as occ
from raysuite.methods.ledger import design_flags, lookup
from raysuite.plan import all_points
from raysuite.spec import load_spec, resolve_stage_configs

METHOD = METHODS["one_case_cascade"]
COMPARISON = "sweeps/one_case_vs_baseline.yaml"  # Table 5.1: One Case against the baseline
SWEEPS = (COMPARISON, "sweeps/one_case_search.yaml")

# (key, the seed's value, where the seed says it): the classifier of the One Case arm
CLASSIFIER = [
    ("classifier.arch", "resnext50_32x4d", "Table 4.3: ResNeXt, 50 layers with capacity = 32"),
    (
        "classifier.weights",
        "imagenet",
        "§4.5: the ResNeXt from a repository of pre-trained models [59]",
    ),
    ("classifier.image_size", 224, "Table 4.3: input image size 224"),
    ("classifier.epochs", 127, "Table 4.3: number of epochs 127"),
    ("classifier.loss", "soft_f1", "Table 4.3: F1 loss (§3.6.1, after Park [55])"),
    ("classifier.cutout_from_epoch", 70, '§4.4.1: "After around 70 epochs, ... Cutout"'),
    (
        "classifier.augment",
        True,
        "§4.2.1: Table 4.1's transformations before the training of any model",
    ),
    (
        "classifier.weight_decay",
        0.01,
        "§3.5, §4.5: fastai's training loop, its default wd 1e-2 (true_wd)",
    ),
    (
        "classifier.moms",
        [0.95, 0.85],
        "§3.6.3: cyclic momentum between 2 values (fastai's 0.95, 0.85)",
    ),
]
# both U-Nets: §4.4.2 "the same cyclic learning rate ranges, number of epochs, loss function,
# and optimiser" as the baseline
SEGMENTER = [
    ("segmenter.encoder", "resnet34", "Tables 4.2, 4.4: a ResNet encoder of 34 layers"),
    (
        "segmenter.weights",
        "imagenet",
        "§4.5: fastai's pre-trained encoders; Table 4.2 freezes them",
    ),
    ("segmenter.image_size", 256, "Tables 4.2, 4.4: input image size 256"),
    ("segmenter.epochs", 18, "Table 4.2: 6 (frozen) + 12 (un-frozen); Table 4.4: 18"),
    ("segmenter.frozen_epochs", 6, "Table 4.2: 6 (frozen)"),
    ("segmenter.batch_size", 12, '§5.3: the Kaggle submission "baseline 12 bs TTA"'),
    ("segmenter.jaccard_weight", 1.0, "Tables 4.2, 4.4: Jaccard (IoU) loss"),
    ("segmenter.dice_weight", 0.0, "Tables 4.2, 4.4: the Jaccard loss alone"),
    ("segmenter.bce_weight", 0.0, "Tables 4.2, 4.4: the Jaccard loss alone"),
    ("segmenter.focal_weight", 0.0, "Tables 4.2, 4.4: the Jaccard loss alone"),
    ("segmenter.tversky_weight", 0.0, "Tables 4.2, 4.4: the Jaccard loss alone"),
    ("segmenter.combo_weight", 0.0, "Tables 4.2, 4.4: the Jaccard loss alone"),
    (
        "segmenter.augment",
        True,
        "§4.2.1: Table 4.1's transformations before the training of any model",
    ),
    ("segmenter.weight_decay", 0.01, "§4.5: fastai's training loop, its default wd 1e-2 (true_wd)"),
    (
        "segmenter.moms",
        [0.95, 0.85],
        "§3.6.3: cyclic momentum between 2 values (fastai's 0.95, 0.85)",
    ),
    ("segmenter.beta2", 0.99, "Tables 4.2, 4.4: Adam, fastai v1's betas (0.9, 0.99)"),
    (
        "segmenter.train_bn",
        True,
        "§4.5: fastai v1's frozen body keeps its BatchNorm training (train_bn)",
    ),
]
# §5.2 post-processing, Table 5.1's rows
POSTHOC = [
    ("posthoc.search", "grid", '§5.2: "a series of thresholds between (0.01, 1) are tested"'),
    (
        "posthoc.cls_thresholds",
        [0.5],
        "§4.1.2 Algorithm 1: the CNN's class decision empties the mask",
    ),
    ("posthoc.min_areas", [0], "§5.2: ArgMax, thresholding and TTA; no area filter"),
    ("posthoc.tta", ["none", "flip"], "Table 5.1: the Raw and TTA rows"),
]
# the thing compared (§4.3, §4.4): no classifier and every image for the baseline U-Net;
# the classifier gate and positives only for One Case
ARMS = {
    "one_case": {"classifier.enabled": True, "segmenter.positives_only": True},
    "baseline": {"classifier.enabled": False, "segmenter.positives_only": False},
}
FOLDS = 5  # §5.3: "5-fold cross validation"


def _configs(path):
    spec = load_spec(path)
    return spec, [(p, resolve_stage_configs(spec, p, where="search")) for p in all_points(spec)]


def _rows(configs):
    return (CLASSIFIER if configs["classifier"]["enabled"] else []) + SEGMENTER + POSTHOC


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_table_5_1_sweep_is_the_seeds_experiment():
    spec, points = _configs(COMPARISON)
    assert {p["arm"]: {k: lookup(c, k) for k in ARMS[p["arm"]]} for p, c in points} == ARMS
    for point, configs in points:
        for key, value, where in _rows(configs):
            assert _plain(lookup(configs, key)) == value, f"{point}: {key} ({where})"
        assert not design_flags("004", METHOD.seed_design(configs), configs), point
    assert spec.data.split.folds == FOLDS and spec.search.repeats == {"fold": FOLDS}
    assert not spec.search.grid and spec.search.optuna is None


def test_seed_design_agrees_with_the_literal_table():
    for arm, overrides in ARMS.items():
        configs = {"classifier": {"enabled": overrides["classifier.enabled"]}}
        design = occ.seed_design(configs)
        rows = _rows({"classifier": configs["classifier"]})
        assert {key: _plain(value) for key, value in design.items()} == {
            key: value for key, value, _ in rows
        }, arm


@pytest.mark.parametrize("path", SWEEPS)
def test_both_arms_start_from_imagenet(path):
    _, points = _configs(path)
    for point, configs in points:
        needs = {(n.key, n.arch, lookup(configs, n.key)) for n in METHOD.pretrained(configs)}
        expected = {("segmenter.weights", "resnet34", "imagenet")}
        if point["arm"] == "one_case":
            expected.add(("classifier.weights", "resnext50_32x4d", "imagenet"))
        assert needs == expected, point


def test_the_search_sweep_is_flagged_where_it_leaves_the_thesis():
    flags = departures_of(load_spec(SWEEPS[1])).flags
    assert all(
        any("`posthoc.search` 'optuna' ≠ 'grid'" in f for f in found) for found in flags.values()
    )


def test_an_override_off_the_seed_is_flagged():
    spec = load_spec(COMPARISON, ["stages.posthoc.min_areas=[0,64]"])
    flags = departures_of(spec).flags
    assert all(
        "not seed 004's design: `posthoc.min_areas` [0, 64] ≠ [0]" in f for f in flags.values()
    )


def test_paper_and_ledger_entries_are_complete():
    assert METHOD.paper.title == "Pneumothorax Segmentation"
    assert METHOD.paper.authors == "Usama Zidan"
    assert "University of Nottingham" in METHOD.paper.venue and "May 2020" in METHOD.paper.venue
    items = [d.item for d in METHOD.departures]
    assert len(items) == len(set(items))
    # the review's findings that stay departures are declared, with the reason
    for item in (
        "Table 5.1 Searched row",
        "posthoc.pixel_thresholds",
        "classifier.weights",
        "classifier schedule",
    ):
        assert item in items, item
    fields = {stage: set(d.config.model_fields) for stage, d in METHOD.stages.items()}
    for d in METHOD.departures:
        assert d.seed and d.ours and d.why and ("§" in d.seed or "Table" in d.seed), d
        for stage, name in re.findall(r"\b(classifier|segmenter|predict|posthoc)\.(\w+)", d.item):
            assert name in fields[stage], d.item  # a named key is a real field
    assert set(METHOD.epoch_seconds) == {"classifier", "segmenter", "predict"}
