"""Seed 000's constants held by the shipped sweeps: a literal table written from the seed's
text (Benčević, Galić, Pizurica: SimCLR pretraining for Faster R-CNN on VinDr-CXR), not from
the code; every other difference from the seed is in the ledger."""


import pytest

from raysuite.departures import departures_of
from raysuite.methods import METHODS
from raysuite.methods import simclr_detection as sd
from raysuite.methods.ledger import design_flags, lookup
from raysuite.plan import all_points
from raysuite.spec import load_spec, resolve_stage_configs

METHOD = METHODS["simclr_detection"]
FRACTIONS_SWEEP, SEARCH_SWEEP = "sweeps/simclr_label_fractions.yaml", "sweeps/simclr_search.yaml"
SWEEPS = (FRACTIONS_SWEEP, SEARCH_SWEEP)

# (key, the seed's value, where the seed says it), for every configuration
EVERY_ARM = [
    (
        "pretrain.arch",
        "resnet50",
        '§3.3: "a SimCLR-based model [?] to pre-train a ResNet-50 backbone"',
    ),
    ("finetune.arch", "resnet50", '§3.2: "a Faster R-CNN-based model [?] with a ResNet50 encoder"'),
    ("pretrain.image_size", 512, '§2.1: "resized to a resolution of 512x512 pixels"'),
    ("finetune.image_size", 512, '§2.1: "resized to a resolution of 512x512 pixels"'),
    (
        "pretrain.crop_scale",
        [0.2, 1.0],
        '§3.3 (1): "A random crop and resize of the original image by a factor of 0.2 to 1"',
    ),
    (
        "pretrain.blur_sigma",
        [0.1, 2.0],
        '§3.3 (3): "a random Gaussian blur with sigma between 0.1 and and 2"',
    ),
    ("pretrain.blur_kernel", 21, '§3.3 (3): "and a kernel size of 21"'),
    (
        "pretrain.noise_fraction",
        [0.125, 0.25],
        '§3.3 (4): "sigma ... between 12.5% and 25% of the mean image pixel value"',
    ),
    ("finetune.epochs", 12, '§3.2: "for 12 epochs"'),
    ("finetune.batch_size", 2, '§3.2: "a batch size of 2"'),
    ("finetune.lr", 0.0002, '§3.2: "a learning rate of 0.0002"'),
    ("finetune.momentum", 0.9, '§3.2: "momentum of 0.9"'),
    ("finetune.weight_decay", 0.0001, '§3.2: "a weight decay of 0.0001"'),
    ("finetune.repeat_threshold", 0.4, '§3.1 (2): "t is a threshold value empirically set to 0.4"'),
]
# the baseline arm (no SimCLR pretraining, everything labelled)
BASELINE = [
    (
        "finetune.weights",
        "coco",
        '§3.2: "The model is initialized using pre-trained weights trained on the COCO dataset"',
    ),
]
# §3: "nine different pre-trained models ... ranging from 10% to 90% ... in increments of 10%",
# and the baseline "with no pre-training and on the full labeled training dataset"
FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
SPLIT = [0.7, 0.1, 0.2]  # §2.1: training 70 %, validation 10 %, test 20 %


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _configs(path):
    spec = load_spec(path)
    return spec, [(p, resolve_stage_configs(spec, p, where="search")) for p in all_points(spec)]


def _rows(configs):
    return EVERY_ARM + (BASELINE if configs["pretrain"]["fraction"] == 0 else [])


def test_label_fraction_sweep_is_the_seeds_experiment():
    spec, points = _configs(FRACTIONS_SWEEP)
    assert spec.search.grid["pretrain.fraction"] == FRACTIONS
    assert list(spec.data.split.ratios) == SPLIT
    for point, configs in points:
        for key, value, where in _rows(configs):
            assert _plain(lookup(configs, key)) == value, f"{point}: {key} ({where})"
    # the comparison is on the test split; validation picks each trial's checkpoint (§2.1)
    assert (spec.objective.metric, spec.objective.scope) == ("test/map40", "last")
    assert (
        METHOD.monitor == "val/map40"
        and not spec.search.optuna
        and spec.search.scheduler.asha is None
    )


def test_search_sweep_holds_the_seeds_constants_where_it_does_not_search():
    spec, points = _configs(SEARCH_SWEEP)
    searched = set(spec.search.optuna.space)
    assert searched == {"pretrain.temperature", "finetune.lr", "finetune.repeat_threshold"}
    for point, configs in points:  # the grid arm is the seed's own setting
        for key, value, where in _rows(configs):
            assert _plain(lookup(configs, key)) == value, f"{point}: {key} ({where})"
    space = spec.search.optuna.space
    assert space["finetune.lr"].loguniform[0] <= 0.0002 <= space["finetune.lr"].loguniform[1]
    assert (
        space["finetune.repeat_threshold"].uniform[0]
        <= 0.4
        <= space["finetune.repeat_threshold"].uniform[1]
    )
    assert spec.objective.metric == "val/map40"  # Optuna and ASHA never see the test split


@pytest.mark.parametrize("path", SWEEPS)
def test_every_arm_starts_from_the_coco_detector(path):
    _, points = _configs(path)
    for _, configs in points:
        [need] = METHOD.pretrained(configs)
        assert (need.key, need.arch, lookup(configs, need.key)) == (
            "finetune.weights",
            sd.COCO_ARCH,
            "coco",
        )
        # the arms compared get the same BN and trainable stages
        assert (configs["finetune"]["frozen_bn"], configs["finetune"]["trainable_layers"]) == (
            True,
            3,
        )


@pytest.mark.parametrize("path", SWEEPS)
def test_pretraining_length_is_the_same_at_every_fraction(path):
    _, points = _configs(path)
    steps = {c["pretrain"]["epochs"] * c["pretrain"]["steps_per_epoch"] for _, c in points}
    assert steps == {1000}


def test_seed_design_agrees_with_the_literal_table():
    for fraction in (0.0, 0.5):
        configs = {"pretrain": {"fraction": fraction}, "finetune": {}}
        design = METHOD.seed_design(configs)
        rows = EVERY_ARM + (BASELINE if fraction == 0 else [])
        assert set(design) == {key for key, _, _ in rows}
        for key, value, where in rows:
            assert _plain(design[key]) == value, f"{key} ({where})"


def test_an_override_off_the_seed_is_flagged():
    spec = load_spec(FRACTIONS_SWEEP, ["stages.finetune.lr=0.001"])
    flags = departures_of(spec).flags
    assert len(flags) == len(FRACTIONS)
    assert all("not seed 000's design: `finetune.lr` 0.001 ≠ 0.0002" in f for f in flags.values())
    # a scratch baseline is off the seed's design (§3.2: COCO); SimCLR arms are not judged on it
    _, points = _configs(FRACTIONS_SWEEP)
    for _, configs in points[:2]:
        scratch = {**configs, "finetune": {**configs["finetune"], "weights": "none"}}
        flagged = design_flags("000", METHOD.seed_design(scratch), scratch)
        baseline = configs["pretrain"]["fraction"] == 0
        assert flagged == (
            ["not seed 000's design: `finetune.weights` 'none' ≠ 'coco'"] if baseline else []
        )


def test_paper_and_ledger_entries_are_complete():
    assert METHOD.paper.authors == "Marin Benčević, Irena Galić, Aleksandra Pizurica"
    assert "no title" in METHOD.paper.title  # the seed's text has none
    items = [d.item for d in METHOD.departures]
    assert len(items) == len(set(items))
    # the review's findings that stay departures are declared
    for item in ("finetune.lr_milestones", "pretrain.steps_per_epoch", "pretrain.crop_size", "finetune.frozen_bn",
                 "SimCLR arms' FPN, RPN and box head", "classes", "abnormal images"):  # fmt: skip
        assert item in items, item
    for d in METHOD.departures:
        assert d.seed and d.ours and d.why and "§" in d.seed, d.item
    assert set(METHOD.epoch_seconds) == {"pretrain", "finetune"}
