"""Seed 001's constants held by the shipped sweeps: a literal table written from the seed's
text (Konieczkowicz, "Self-supervised learning for medical diagnosis and imaging"), not
from the code; every other difference from the seed is in the ledger."""

import re

import pytest

from raysuite.departures import departures_of
from raysuite.methods import METHODS
from raysuite.methods import iou_simsiam_seg as iss
from raysuite.methods.ledger import lookup
from raysuite.plan import all_points
from raysuite.spec import load_spec, resolve_stage_configs

METHOD = METHODS["iou_simsiam_seg"]
SWEEPS = ("sweeps/iou_intervals.yaml", "sweeps/iou_interval_search.yaml")

SWIN = [  # §4.2 Backbone, for the pretrained encoder and the fine-tuned Swin UNETR alike
    ("feature_size", 48, '§4.2: "C is set to 48"'),
    ("window_size", 7, '§4.2: "M is set to 7"'),
    ("depths", [2, 2, 2, 2], "§4.2: 4 stages, each of 2 Swin transformer blocks"),
    (
        "num_heads",
        [3, 6, 12, 24],
        '§4.2: "3 for the first stage and is doubled in every follow-up stage"',
    ),
    ("amp", True, '§4.5: "All computation ... is performed under automatic mixed precision"'),
]
PRETRAIN = [
    ("pretrain.epochs", 100, "Table 4.1: No. of epochs 100"),
    ("pretrain.batch_size", 128, "Table 4.1: batch size 128"),
    ("pretrain.momentum", 0.9, "Table 4.1: SGD (momentum = 0.9)"),
    ("pretrain.lr", 0.025, "Table 4.1: initial 0.025"),
    ("pretrain.final_lr", 1e-6, "Table 4.1: + cosine decay to 1e-6"),
    ("pretrain.weight_decay", 1e-5, "Table 4.1: weight decay 1e-5"),
    (
        "pretrain.drop_path",
        0.1,
        '§4.5: "drop path rate of 0.1 is used for the Swin UNETR backbone"',
    ),
    ("pretrain.r1", 30, '§4.5: "r_1 was set to 30"'),
    ("pretrain.r2", 4, '§4.5: "r_2 was set to 4"'),
    ("pretrain.proj_dim", 2048, "§4.1: projection head of 3 layers with d = 2048"),
    ("pretrain.pred_dim", 512, "§4.1: bottleneck dimension d_b = 512"),
    ("pretrain.max_slices_per_epoch", None, "§4.3: every one of the 237,449 unlabelled slices"),
] + [(f"pretrain.{k}", v, w) for k, v, w in SWIN]
FINETUNE = [
    ("finetune.epochs", 225, "Table 4.1: No. of epochs 225"),
    ("finetune.batch_size", 32, "Table 4.1: batch size 32"),
    ("finetune.lr", 0.001, "Table 4.1: 10-epoch linear warmup to 0.001"),
    ("finetune.warmup_epochs", 10, "Table 4.1: 10-epoch linear warmup"),
    ("finetune.final_lr", 5e-5, "Table 4.1: + cosine decay to 5e-5"),
    ("finetune.weight_decay", 1e-5, "Table 4.1: weight decay 1e-5"),
    ("finetune.crops_per_image", 2, '§4.5: "2 crops are first extracted per each image in batch"'),
    ("finetune.pos_fraction", 0.5, "§4.5: central pixels on a labelled organ with p = 0.5"),
    ("finetune.eval_every", 10, '§4.5: "evaluated every 10 epochs from the beginning"'),
    ("finetune.eval_every_epoch_from", 90, '§4.5: "every epoch starting from 90th epoch"'),
    ("finetune.patience", 20, '§4.5: "no improvement in validation DSC for 20 epochs"'),
    ("finetune.crop_size", 96, '§4.5: "a window size of 96 x 96"'),
    ("finetune.sw_overlap", 0.25, '§4.5: "an overlap of 0.25 between the windows"'),
    ("finetune.labelled_cases", 15, "§4.3: 15 cases in the fine-tuning training subset"),
    ("finetune.val_cases", 35, "§4.3: 35 cases in the fine-tuning validation subset"),
] + [(f"finetune.{k}", v, w) for k, v, w in SWIN]
# Table 4.2's rows: no pretraining, the four non-overlapping intervals (§3), random cropping
TABLE_4_2 = [None, [0.0, 0.0], [0.0001, 0.3], [0.3, 0.6], [0.6, 1.0], [0.0, 1.0]]
REPEATS = {"pretrain.seed": 2, "finetune.seed": 2}  # §4.6: 2 pretrainings x 2 fine-tunings each


def _points(path):
    spec = load_spec(path)
    return spec, [(p, resolve_stage_configs(spec, p, where="search")) for p in all_points(spec)]


def _same(a, b):
    if isinstance(b, float) and a is not None:
        return a == pytest.approx(b, rel=1e-12)
    return a == b


@pytest.mark.parametrize("path", SWEEPS)
def test_shipped_sweeps_hold_the_seeds_constants(path):
    _, points = _points(path)
    for point, configs in points:
        rows = FINETUNE + (PRETRAIN if configs["pretrain"]["iou_interval"] is not None else [])
        for key, value, where in rows:
            assert _same(lookup(configs, key), value), (
                f"{path} {point}: {key} = {lookup(configs, key)} ({where})"
            )


def test_table_4_2_sweep_is_the_seeds_experiment():
    spec, points = _points(SWEEPS[0])
    assert sorted(map(str, (c["pretrain"]["iou_interval"] for _, c in points))) == sorted(
        map(str, TABLE_4_2)
    )
    assert spec.search.repeats == REPEATS
    # the search sweep's Optuna draws take the seed's pretraining too: only the interval moves
    search = load_spec(SWEEPS[1])
    assert set(search.search.optuna.space) == {"pretrain.iou_min", "pretrain.iou_width"}


def test_the_study_trains_from_nothing_pretrained():
    # §4.6: SimSiam from scratch on FLARE22; the baseline from random initialisation
    for path in SWEEPS:
        for _, configs in _points(path)[1]:
            assert METHOD.pretrained(configs) == []


def test_seed_design_agrees_with_the_literal_table():
    design = iss.seed_design({"pretrain": {"iou_interval": [0.3, 0.6]}})
    for key, value, where in PRETRAIN + FINETUNE:
        assert key in design and _same(design[key], value), f"{key} ({where})"
    scratch = iss.seed_design({"pretrain": {"iou_interval": None}})
    assert not [k for k in scratch if k.startswith("pretrain.")]  # the skipped stage is not judged


def test_an_override_off_the_seed_is_flagged():
    flags = departures_of(load_spec(SWEEPS[0], ["stages.finetune.patience=10"])).flags
    assert all("not seed 001's design: `finetune.patience` 10 ≠ 20" in f for f in flags.values())


def test_paper_and_ledger_entries_are_complete():
    assert METHOD.paper.title == "Self-supervised learning for medical diagnosis and imaging"
    assert METHOD.paper.authors == "Wojciech Konieczkowicz"
    assert "AGH University of Science and Technology" in METHOD.paper.venue
    items = [d.item for d in METHOD.departures]
    assert len(items) == len(set(items))
    # the review's crop-2 finding and val/dice's definition are declared with the reason
    assert "pretrain.iou_interval (crop 2's draw)" in items and "val/dice" in items
    fields = {stage: set(d.config.model_fields) for stage, d in METHOD.stages.items()}
    for d in METHOD.departures:
        assert d.seed and d.ours and d.why and re.search(r"§|eq\.|Table|Algorithm", d.seed), d
        for stage, field in re.findall(r"\b(pretrain|finetune)\.(\w+)", d.item):
            assert field in fields[stage], d.item
    # §4.6: 14.9 and 4.3 GPU hours per pretraining and fine-tuning over their epochs
    assert METHOD.epoch_seconds["pretrain"] * 100 == pytest.approx(14.9 * 3600)
    assert METHOD.epoch_seconds["finetune"] * 225 == pytest.approx(4.3 * 3600)
