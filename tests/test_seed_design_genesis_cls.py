"""Seed 002's constants held by the shipped sweeps: a literal table written from the seed's
text (Haichao Song, "Comparison of self-supervised and ImageNet pretraining for medical image
classification", Politecnico di Torino, 2020), not from the code; every other difference from
the seed is in the ledger."""

import pytest

from raysuite.methods import METHODS
from raysuite.methods import genesis_cls as gc
from raysuite.methods.ledger import lookup
from raysuite.plan import all_points
from raysuite.spec import load_spec, resolve_stage_configs

METHOD = METHODS["genesis_cls"]
SWEEPS = ("sweeps/genesis_transfer.yaml", "sweeps/genesis_search.yaml")

# Figure 5.1's cells, (task, encoder, init) -> (epochs, batch size, ReduceLROnPlateau
# factor, head-only warm-up epochs, where the seed says it). "Pre-trained" is init genesis.
CELLS = {
    ("luna16", "vgg16_bn", "scratch"): (18, 32, 0.01, 0, 'Figure 4.9 "Training from scratch": Factor 0.01, 18, 32'),
    ("luna16", "vgg16_bn", "genesis"): (13, 32, 0.01, 0, 'Figure 4.9 "Pre-trained weights": Factor 0.01, 13, 32'),
    ("luna16", "vgg16_bn", "imagenet"): (13, 32, 0.01, 0, 'Figure 4.9 "ImageNet weights": Factor 0.01, 13, 32'),
    ("luna16", "resnet50", "scratch"): (10, 32, 0.1, 0, "§4.2.3: factor=0.1, Epoch: 10, Batch size: 32"),
    ("luna16", "resnet50", "genesis"): (10, 32, 0.1, 0, "§4.2.3: the same for the 3 models"),
    ("luna16", "resnet50", "imagenet"): (10, 32, 0.1, 0, "§4.2.3: the same for the 3 models"),
    ("mura", "resnet50", "scratch"): (12, 16, 0.01, 0, 'Figure 4.33 "Training from scratch": Factor 0.01, 12, 16'),
    ("mura", "resnet50", "genesis"): (11, 16, 0.1, 2, 'Figure 4.33: Factor 0.1, "Warm up: 2 epoch Fine-tune: 9 epoch", 16'),
    ("mura", "resnet50", "imagenet"): (5, 16, 1.0, 2, 'Figure 4.33: "SGD(lr=0.001)" (no factor), "Warm up: 2 epoch Fine-tune: 3 epoch", 16'),
    ("mura", "vgg16_bn", "scratch"): (15, 16, 0.01, 0, 'Figure 4.38 "Training from scratch": Factor 0.01, 15, 16'),
    ("mura", "vgg16_bn", "genesis"): (12, 16, 0.1, 0, 'Figure 4.38 "Pre-trained weights": Factor 0.1, 12, 16'),
    ("mura", "vgg16_bn", "imagenet"): (5, 16, 0.01, 0, 'Figure 4.38 "ImageNet weights": Factor 0.01, 5, 16'),
}  # fmt: skip

# (key, the seed's value, where the seed says it), for every configuration
EVERY = [
    ("finetune.lr", 0.001, 'Figures 4.9, 4.33, 4.38 and §4.2.3: "SGD(lr=0.001)"'),
    ("finetune.dropout", 0.5, '§4.2.1.6: "add the Dropout layer after the Flatten layer and dense layer and set it to 0.5"'),
    ("finetune.zoom", [0.9, 1.1], "§4.2.1.3 and §4.2.4.2: random zooming [0.9, +1.1]"),
    ("pretrain.crop", 448, '§3.1.8: "random clip for images of size 448*448"'),
    ("pretrain.input_size", 224, '§3.1.8: "resize these random clippings ... i.e. 224*224"'),
    ("pretrain.norm", "batch", '§4.2.2-§4.2.6 titles: "Unet ... encoder Batch Normalization"'),
    ("pretrain.mri_norm", "max", '§3.1.9: "calculate max pixel value for each 2D image and then divides by this maximum"'),
    ("pretrain.modality_caps", {"CT": 155105, "MRI": 167179, "XRAY": 134720}, "§3.1.6: MRI 167179, CT 155105, X-RAY 134720"),
]  # fmt: skip
LUNA16 = [
    ("finetune.negative_fraction", 0.1, '§4.2.1.3: "keeping 10% negative images per folder"'),
    ("finetune.positive_copies", 8, '§4.2.1.3: "increasing 8 times the positive patches"'),
    ("finetune.shift_mm", 1.0, "§4.2.1.3: translation [-1 mm, +1 mm]"),
    ("finetune.rotation", 200.0, "§4.2.1.3: random rotation [200°, +200°] (as printed)"),
]
MURA = [
    ("finetune.body_part", "XR_SHOULDER", '§4.2.4.1: "mainly used the shoulder dataset"'),
    ("finetune.rotation", 20.0, "§4.2.4.2: rotation_range: 20"),
    (
        "finetune.mura_copies",
        7,
        "§4.2.4.2: 8379 shoulder images -> Negative 29477 + Positive 29176 = 58653, x7",
    ),
]
LUNA16_RESNET50 = [
    ("finetune.momentum", 0.9, "§4.2.3: SGD ... momentum 0.9"),
    ("finetune.plateau_patience", 3, "§4.2.3: ReduceLROnPlateau factor=0.1, patience=3"),
]
IMAGENET = [("finetune.weights", "imagenet", '§4.2: "transfer learning by using imagenet weights"')]
INPUT = {"luna16": 64, "mura": 224}  # Figures 4.9 / 4.33 / 4.38 "Input shape": 64*64, 224*224
FOLDS = 5  # §4.2.1.7: "5-fold cross validation ... 10 subsets ... The remaining 2 subset ... test"


def _points(path):
    spec = load_spec(path)
    return spec, [(p, resolve_stage_configs(spec, p, where="search")) for p in all_points(spec)]


def _cell(configs):
    return configs["finetune"]["task"], configs["pretrain"]["encoder"], configs["pretrain"]["init"]


def _rows(configs):
    task, encoder, init = _cell(configs)
    epochs, batch, factor, warmup, where = CELLS[(task, encoder, init)]
    rows = [("finetune.epochs", epochs, where), ("finetune.batch_size", batch, where),
            ("finetune.plateau_factor", factor, where), ("finetune.warmup_epochs", warmup, where)]  # fmt: skip
    rows += EVERY + (LUNA16 if task == "luna16" else MURA)
    rows += LUNA16_RESNET50 if (task, encoder) == ("luna16", "resnet50") else []
    return rows + (IMAGENET if init == "imagenet" else [])


LEDGER = {d.item for d in METHOD.departures}


@pytest.mark.parametrize("path", SWEEPS)
def test_shipped_sweeps_hold_the_seeds_constants_or_declare_them(path):
    """Each row equals the sweep's value, or the ledger has an entry for its key; the only
    such key today is LUNA16's rotation (the seed prints [200°, +200°], read as ±20°)."""
    _, points = _points(path)
    differing = set()
    for point, configs in points:
        for key, value, where in _rows(configs):
            if lookup(configs, key) != value:
                differing.add(key)
                assert key in LEDGER, (
                    f"{path} {point}: {key} {lookup(configs, key)!r} ≠ {value!r} ({where})"
                )
        assert (
            gc.FinetuneConfig.model_validate(configs["finetune"]).size()
            == INPUT[configs["finetune"]["task"]]
        )
    assert differing == {"finetune.rotation"}


def test_figure_5_1_is_the_transfer_sweep():
    spec, points = _points(SWEEPS[0])
    assert sorted(_cell(c) for _, c in points) == sorted(CELLS)
    assert spec.search.repeats == {"fold": FOLDS}
    assert spec.objective.metric == "val/auc"  # Figure 5.1: AUC


def test_the_search_sweep_is_figure_4_9s_pretrained_row():
    _, points = _points(SWEEPS[1])
    assert {_cell(c) for _, c in points} == {("luna16", "vgg16_bn", "genesis")}


@pytest.mark.parametrize("path", SWEEPS)
def test_the_pool_leaves_luna16_and_muras_test_split_out(path):
    """§5.1: "the LUNA16 dataset is not present in the pre-trained dataset"; §3.1.5 samples
    all of MURA: its 36 808 images (Figure 3.1) are MURA's training split, the valid split
    being the MURA test set (§4.2.4.4)."""
    spec, points = _points(path)
    for _, configs in points:
        pool = configs["pretrain"]["pool"]
        formats = {spec.data.sources[name].format for name in pool}
        assert "luna16" not in formats
        assert all(
            pool[n]["source_splits"] == ["train"]
            for n in pool
            if spec.data.sources[n].format == "mura"
        )


def test_the_ledger_names_the_paper_and_every_departure_is_complete():
    assert METHOD.paper is not None and METHOD.paper.authors == "Haichao Song"
    assert (
        METHOD.paper.title
        == "Comparison of self-supervised and ImageNet pretraining for medical image classification"
    )
    assert "Politecnico di Torino" in METHOD.paper.venue and "2020" in METHOD.paper.venue
    for d in METHOD.departures:
        assert d.item and d.seed and d.ours and d.why, d
    assert len(LEDGER) == len(METHOD.departures)  # one entry per item
    assert set(METHOD.epoch_seconds) == {"pretrain", "finetune"}
