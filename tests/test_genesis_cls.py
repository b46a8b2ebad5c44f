"""genesis_cls (seed 002): spec checks, ImageNet arms on torchvision's cached weights (loaded,
or skipped with the reason), one pretraining shared by folds and tasks, a pool that never
takes the transfer tasks' held-out data, encoder transfer, the plateau schedule (warm-up
aside, on the held-out fold or a clean validation part), the task splits, planes and
augmentation, the Figure 5.1 report and its arms, and a TINY run whose restoration loss
falls and whose transferred classifier beats chance on synthetic LUNA16 patches."""

import dataclasses
import textwrap

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from raysuite import weight_resolution
from raysuite.data import pretrain_pool, transfer_tasks
from raysuite.data.sources import source_data
from raysuite.methods import METHODS
from raysuite.methods import genesis_cls as gc
from raysuite.methods.nn import pretrained
from raysuite.methods.nn.genesis_models import (
    RestorationUNet,
    TransferClassifier,
    load_imagenet_encoder,
    transfer_encoder,
)
from raysuite.plan import POINT, all_points, decode, grid_trials, plan, skipped_points
from raysuite.spec import SpecError, load_spec, resolve_stage_configs
from raysuite.train.loop import fit, seed_everything
from raysuite.train.runtime import LocalRuntime

METHOD = METHODS["genesis_cls"]

SPEC = """
name: t
method: genesis_cls
data:
  cache_dir: {cache}
  sources:
    cxr: {{format: chestxray14, root: {cxr14}}}
    brain: {{format: folder, root: {brain}, modality: MR}}
    luna: {{format: luna16, root: {luna}}}
    mura: {{format: mura, root: {mura}}}
stages:
  pretrain: {{pool: {{cxr: {{slices_per_patient: 2}}, brain: {{}}}}{extra}}}
  finetune: {{amp: false{fine}}}
search:
  grid: {{pretrain.init: [scratch, genesis, imagenet], finetune.task: [luna16, mura]}}
  repeats: {{fold: 3}}
objective: {{metric: val/auc, scope: last}}
tiny: true
"""


@pytest.fixture
def spec_path(tmp_path, genesis_sources):
    """``spec_path(extra)``: the spec above on the synthetic sources, ``extra`` added to the
    pretrain stage."""
    roots = {name: s["root"] for name, s in genesis_sources["sources"].items()}

    def write(extra: str = "", fine: str = ""):
        path = tmp_path / "spec.yaml"
        path.write_text(
            textwrap.dedent(SPEC.format(cache=tmp_path / "cache", extra=extra, fine=fine, **roots))
        )
        return path

    return write


def _unavailable(spec):
    """The sweep driver's reason a configuration's weights cannot be had (nothing downloaded)."""
    return weight_resolution.resolve(spec, None, download=False).reason


def test_imagenet_arms_need_only_the_library_cache(spec_path, pretrained_cache):
    """Without torchvision's cached file the ImageNet arms are skipped with the reason (the
    generic driver's, not a method rule); once it is where torchvision looks, nothing is."""
    spec = load_spec(spec_path())
    skipped = skipped_points(spec, _unavailable(spec))
    assert len(skipped) == 2 and all(p["pretrain.init"] == "imagenet" for p, _ in skipped)
    assert (
        "finetune.weights=imagenet" in skipped[0][1]
        and "ResNet18_Weights.IMAGENET1K_V1" in skipped[0][1]
    )
    assert "not in the cache" in skipped[0][1]
    assert len(grid_trials(spec, _unavailable(spec))) == 4 * 3
    assert skipped_points(spec) == []  # the method itself refuses nothing
    pretrained_cache.place("resnet18")
    assert skipped_points(spec, _unavailable(spec)) == []
    assert len(grid_trials(spec, _unavailable(spec))) == 6 * 3
    needs = {
        p["pretrain.init"]: METHOD.pretrained(resolve_stage_configs(spec, p, where="search"))
        for p in all_points(spec)
    }
    assert needs["scratch"] == needs["genesis"] == [] and needs["imagenet"] == [
        pretrained.Need("finetune.weights", "resnet18")
    ]


def test_the_imagenet_arm_loads_the_cached_tensors(genesis_sources, tmp_path, pretrained_cache):
    """The classifier's encoder holds the very tensors placed in torchvision's cache; the
    dense head is new (not the file's ``fc``)."""
    data = {**genesis_sources, "cache_dir": str(tmp_path / "cache")}
    METHOD.prepare_data(data)
    state = pretrained_cache.place("resnet18")
    stages = {"pretrain": {"init": "imagenet"}, "finetune": {"task": "mura", "weights": "imagenet"}}
    inputs = METHOD.tiny_inputs("finetune", data, stages)
    encoder = METHOD.stages["finetune"].recipe(inputs).model.encoder.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        assert torch.equal(encoder[key], state[key]), key
    # the driver's stored copy wins over the cache (a sweep's workers read that copy)
    other = pretrained_cache.state("resnet18", seed=1)
    torch.save(other, tmp_path / "stored.pt")
    stored = dataclasses.replace(inputs, pretrained={"weights": tmp_path / "stored.pt"})
    encoder = METHOD.stages["finetune"].recipe(stored).model.encoder.state_dict()
    assert torch.equal(encoder["conv1.weight"], other["conv1.weight"])


def test_a_weights_file_that_does_not_fit_the_encoder_is_refused(
    spec_path, tmp_path, pretrained_cache
):
    wrong = tmp_path / "resnet34.pt"
    torch.save(pretrained_cache.state("resnet34"), wrong)
    spec = load_spec(spec_path(fine=f", weights: {wrong}"))
    skipped = skipped_points(spec, _unavailable(spec))
    assert len(skipped) == 2 and all(
        "resnet34.pt does not fit resnet18" in reason for _, reason in skipped
    )
    with pytest.raises(pretrained.WeightsUnavailable, match="resnet34.pt"):
        pretrained.check_fit("resnet18", wrong)
    with pytest.raises(ValueError, match="resnet34.pt"):
        load_imagenet_encoder(TransferClassifier("resnet18").encoder, "resnet18", wrong)


def test_pretraining_is_shared_by_folds_and_tasks_and_absent_for_scratch(spec_path):
    spec = load_spec(spec_path())
    plans = [plan(spec, *decode(spec, {POINT: point})) for point in grid_trials(spec)]
    genesis = [p for p in plans if p.configs["pretrain"]["init"] == "genesis"]
    assert len({p.keys["pretrain"] for p in genesis}) == 1
    assert len({p.keys["finetune"] for p in genesis}) == len(genesis)
    scratch = [p for p in plans if p.configs["pretrain"]["init"] == "scratch"]
    assert not METHOD.stages["pretrain"].skips(genesis[0].configs["pretrain"])
    assert all(METHOD.stages["pretrain"].skips(p.configs["pretrain"]) for p in scratch)


@pytest.mark.parametrize(
    ("extra", "fine", "key"),
    [
        (", norm: instance, init: imagenet", "", "pretrain.norm"),
        (", modality_caps: {PET: 4}", "", "modality_caps"),
        (", encoder: vit_base", "", "encoder"),
        (", init: imagenet", ", weights: none", "finetune.weights"),
        ("", ", planes: []", "planes"),
        ("", ", val_fraction: 1.0", "val_fraction"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(spec_path, extra, fine, key):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        load_spec(spec_path(extra, fine))


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("luna: {}", "pretrain.pool.luna"),
        ("mura: {source_splits: [train, valid]}", "pretrain.pool.mura"),
    ],
)
def test_a_pool_entry_with_a_transfer_tasks_held_out_data_is_refused(
    tmp_path, spec_path, entry, key
):
    path = tmp_path / "leak.yaml"
    path.write_text(spec_path().read_text().replace("brain: {}", f"brain: {{}}, {entry}"))
    with pytest.raises(SpecError, match=key.replace(".", r"\.") + ".*the data it is tested on"):
        load_spec(path)


def test_a_pool_entry_that_is_no_source_is_refused(tmp_path, spec_path):
    path = tmp_path / "nowhere.yaml"
    path.write_text(spec_path().read_text().replace("brain: {}", "nowhere: {}"))
    with pytest.raises(SpecError, match=r"pretrain\.pool"):
        load_spec(path)


def test_a_task_without_its_source_is_refused(tmp_path, spec_path):
    text = (
        spec_path()
        .read_text()
        .replace("    mura: {format: mura, root: ", "    other: {format: flare22, root: ")
    )
    path = tmp_path / "nomura.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match="finetune.task"):
        load_spec(path)


def test_shipped_sweeps_load_with_their_design():
    """Figure 5.1's twelve cells, each an arm (its schedule: tests/test_seed_design_genesis_cls.py)."""
    transfer = load_spec("sweeps/genesis_transfer.yaml")
    cells = {
        (a["finetune.task"], a["pretrain.encoder"], a["pretrain.init"])
        for a in transfer.search.arms.values()
    }
    assert cells == {(t, e, i) for t in ("luna16", "mura") for e in ("vgg16_bn", "resnet50")
                     for i in ("scratch", "genesis", "imagenet")}  # fmt: skip
    assert len(transfer.search.arms) == 12 and not transfer.search.grid
    assert transfer.search.repeats["fold"] == 5
    search = load_spec("sweeps/genesis_search.yaml")
    assert "pretrain.transforms.local_rate" in search.search.optuna.space
    assert search.search.scheduler.asha is not None


def test_encoder_transfers_with_every_key_and_imagenet_files_map_onto_features(tmp_path):
    unet, clf = RestorationUNet("vgg11_bn"), TransferClassifier("vgg11_bn")
    with torch.no_grad():
        for p in unet.encoder.parameters():
            p.normal_()
    transfer_encoder(unet, clf)
    for (k, a), (k2, b) in zip(
        unet.encoder.state_dict().items(), clf.encoder.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    full = timm.create_model("vgg11_bn")
    torch.save(full.state_dict(), tmp_path / "vgg11_bn.pt")
    load_imagenet_encoder(clf.encoder, "vgg11_bn", tmp_path / "vgg11_bn.pt")
    assert torch.equal(
        clf.encoder.state_dict()["features_0.weight"], full.state_dict()["features.0.weight"]
    )
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match="r18.pt"):
        load_imagenet_encoder(clf.encoder, "vgg11_bn", str(tmp_path / "r18.pt"))


def test_plateau_ignores_the_warm_up_epochs():
    """§4.2.2: the warm-up trains the head at the initial lr; the plateau counts from the
    first epoch of every layer (epoch 3 after 2 warm-up epochs)."""
    plateau = gc.Plateau("val/loss", 0.1, 2, after=2)
    for epoch, loss in enumerate((1.0, 2.0, 3.0, 3.5, 3.6), start=1):
        plateau.update({"val/loss": loss, "finetune/epoch": float(epoch)})
        assert plateau.scale == (0.1 if epoch == 5 else 1.0), epoch
    assert plateau.best == 3.0


def test_plateau_scales_after_patience_and_replays_identically():
    metrics = [{"val/loss": v} for v in (1.0, 0.9, 0.95, 0.92, 0.91, 0.8, 0.85, 0.86, 0.87, 0.88)]
    plateau = gc.Plateau("val/loss", 0.1, 3)
    scales = []
    for m in metrics:
        plateau.update(m)
        scales.append(plateau.scale)
    # new minima at 1, 2 and 6; three misses after 2 (epochs 3-5) -> 0.1; then 0.8 is a new
    # minimum, three misses (epochs 7-9) -> 0.01
    assert scales == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    replay = gc.Plateau("val/loss", 0.1, 3)
    for m in metrics:
        replay.update(m)
    assert replay.scale == plateau.scale and replay.wait == plateau.wait


def test_random_affine_identity_flip_and_shift():
    image = torch.arange(36, dtype=torch.float32).reshape(1, 6, 6)
    rng = np.random.default_rng(0)
    same = transfer_tasks.random_affine(image, rng, (1.0, 1.0), 0.0, flips=False)
    assert torch.allclose(same, image, atol=1e-4)

    class Always:  # uniform draws at their bounds' centre, flips always
        def uniform(self, lo, hi):
            return (lo + hi) / 2

        def random(self):
            return 0.0

    flipped = transfer_tasks.random_affine(image, Always(), (1.0, 1.0), 0.0)
    assert torch.allclose(flipped, image.flip(-1).flip(-2), atol=1e-4)

    class Shift(Always):
        def uniform(self, lo, hi):
            return hi

        def random(self):
            return 1.0

    shifted = transfer_tasks.random_affine(image, Shift(), (1.0, 1.0), 0.0, shift_px=(1.0, 2.0), flips=False)
    assert torch.allclose(
        shifted[0, 1:, 2:], image[0, :-1, :-2], atol=1e-4
    )  # content moves down 1, right 2


def test_luna_folds_hold_out_subset_pairs_and_keep_a_tenth_of_negatives(genesis_sources, tmp_path):
    data = {**genesis_sources["sources"]["luna"], "cache_dir": str(tmp_path / "cache")}
    cfg = gc.FinetuneConfig()
    train, val = transfer_tasks.luna_split(data, 2, cfg)
    assert set(val.source_split) == {"subset4", "subset5"}
    assert not set(train.source_split) & {"subset4", "subset5"}
    df, _ = gc.ensure_manifest(data)
    labels = transfer_tasks.task_labels(df, "luna16")
    kept = pd.concat([train, val])
    assert transfer_tasks.task_labels(kept, "luna16").sum() == labels.sum()
    assert (1 - transfer_tasks.task_labels(kept, "luna16")).sum() == pytest.approx(0.1 * (1 - labels).sum(), abs=10)


def test_mura_keeps_one_body_part_on_its_own_split(genesis_sources, tmp_path):
    data = {**genesis_sources["sources"]["mura"], "cache_dir": str(tmp_path / "cache")}
    df, _ = gc.ensure_manifest(data)
    part = next(p for p in df[df.source_split == "valid"].path.str.split("/").str[2])
    train, val = transfer_tasks.mura_split(data, gc.FinetuneConfig(body_part=part))
    assert set(train.source_split) == {"train"} and set(val.source_split) == {"valid"}
    assert all(f"/{part}/" in p for p in pd.concat([train, val]).path)
    assert len(train) + len(val) == df.path.str.contains(f"/{part}/").sum()


def test_figure_5_1_report(tmp_path):
    """Rows LUNA16 then MURA, VGG before ResNet; columns Scratch, ImageNet, Pre-trained; a
    cell two configurations share (a search) keeps the better mean and says so."""
    runs = [  # (config, task, encoder, init, AUC per fold)
        ("m", "mura", "vgg16_bn", "genesis", [0.6, 0.8]),
        ("g", "luna16", "vgg16_bn", "genesis", [0.9, 0.9]),
        ("s", "luna16", "vgg16_bn", "scratch", [0.7, 0.8]),
        ("s2", "luna16", "vgg16_bn", "scratch", [0.5, 0.6]),
        ("i", "luna16", "vgg16_bn", "imagenet", [0.85]),
        ("r", "luna16", "resnet50", "scratch", [0.55, 0.65]),
    ]
    rows = [
        {"config_id": cid, "config": cid, "objective": v, "fold": fold,
         "param.stages.finetune.task": task, "param.stages.pretrain.encoder": enc, "param.stages.pretrain.init": init}
        for cid, task, enc, init, values in runs
        for fold, v in enumerate(values)
    ]  # fmt: skip
    (path,) = gc.report(pd.DataFrame(rows), tmp_path, "val/auc")
    table = pd.read_csv(path).fillna("")
    assert table.columns.tolist() == [
        "Dataset",
        "Backbone",
        "Metric",
        "Scratch",
        "ImageNet",
        "Pre-trained",
    ]
    assert table[["Dataset", "Backbone"]].values.tolist() == [
        ["LUNA16", "vgg16_bn"],
        ["LUNA16", "resnet50"],
        ["MURA", "vgg16_bn"],
    ]
    luna = table.iloc[0]
    assert luna.Scratch == "0.7500 ± 0.0500 (2), best of 2"  # population std of (0.7, 0.8)
    assert luna.ImageNet == "0.8500 (n=1)"
    assert luna["Pre-trained"] == "0.9000 ± 0.0000 (2)"
    assert table.iloc[2]["Pre-trained"] == "0.7000 ± 0.1000 (2)" and table.iloc[2].Scratch == ""


def test_tiny_restoration_falls_and_transfer_beats_chance(genesis_sources, tmp_path):
    data = {**genesis_sources, "cache_dir": str(tmp_path / "cache")}
    METHOD.prepare_data(data)
    seed_everything(0)
    pool = {"cxr14": {"slices_per_patient": 2}, "flare": {"slices_per_patient": 6}, "brain": {}}
    pre = {"pool": pool, "modality_caps": {"CT": 24, "MRI": 24, "XRAY": 24}, "epochs": 3}
    pre_rt = LocalRuntime(tmp_path / "pre")
    fit(
        METHOD.stages["pretrain"].recipe(METHOD.tiny_inputs("pretrain", data, {"pretrain": pre})),
        pre_rt,
    )
    losses = [r["pretrain/loss"] for r in pre_rt.reports]
    assert losses[-1] < losses[0]
    totals = pd.read_csv(__import__("io").StringIO(pre_rt.reports[0]["artifact/pool_totals.csv"]))
    assert totals[totals.body_part == "all"].set_index("group").slices.to_dict() == {
        "CT": 24,
        "MRI": 24,
        "XRAY": 24,
    }
    fine = {"task": "luna16", "negative_fraction": 0.5, "epochs": 6}
    inputs = METHOD.tiny_inputs(
        "finetune", data, {"pretrain": pre, "finetune": fine}, {"pretrain": pre_rt.checkpoints[-1]}
    )
    rt = LocalRuntime(tmp_path / "fine")
    fit(METHOD.stages["finetune"].recipe(inputs), rt)
    assert rt.reports[-1]["finetune/bce"] < rt.reports[0]["finetune/bce"]
    assert rt.reports[-1]["val/auc"] > 0.8


def test_mura_fold_repeats_are_reruns_with_their_own_seed(genesis_sources, tmp_path):
    """MURA's folds share one split, so only the seed can tell fold repeats apart (the smoke
    sweep's MURA folds were identical to the last digit before the fold reached the seed)."""
    data = {**genesis_sources, "cache_dir": str(tmp_path / "cache")}
    METHOD.prepare_data(data)
    fine = {"task": "mura"}

    def head(fold: int) -> torch.Tensor:
        seed_everything(0)
        stages = {"pretrain": {"init": "scratch"}, "finetune": fine}
        recipe = METHOD.stages["finetune"].recipe(
            METHOD.tiny_inputs("finetune", data, stages, fold=fold)
        )
        return torch.cat([p.detach().flatten() for p in recipe.model.head_parameters()])

    assert torch.equal(head(1), head(1))
    assert not torch.equal(head(0), head(1))


def test_the_default_pool_leaves_out_the_transfer_tasks_held_out_data(genesis_sources, tmp_path):
    """An empty pool takes every source but LUNA16 (each subset is some fold's test set) and
    MURA's train split only (its valid split is the MURA test set); so does a named MURA
    entry without source_splits."""
    data = {**genesis_sources, "cache_dir": str(tmp_path / "cache")}
    METHOD.prepare_data(data)
    sources, _ = pretrain_pool.pool_sources(data, gc.PretrainConfig())
    assert [s.name for s in sources] == ["cxr14", "flare", "brain", "mura"]
    mura = next(s for s in sources if s.name == "mura")
    full, _ = gc.ensure_manifest(source_data(data, "mura"))
    assert set(full.source_split) == {"train", "valid"} and set(mura.rows.source_split) == {"train"}
    assert len(mura.rows) == (full.source_split == "train").sum()
    named, _ = pretrain_pool.pool_sources(data, gc.PretrainConfig(pool={"mura": {}, "brain": {}}))
    assert set(named[0].rows.source_split) == {"train"} and len(named) == 2
    table = gc.pooling.build_pool(sources, seed=0)
    assert not table.source.eq("luna").any()
    assert not set(table.path[table.source == "mura"]) & set(
        full.path[full.source_split == "valid"]
    )


def test_val_fraction_carves_a_validation_part_by_patient_and_drives_the_plateau(
    genesis_sources, tmp_path
):
    data = {**genesis_sources["sources"]["luna"], "cache_dir": str(tmp_path / "cache")}
    cfg = gc.FinetuneConfig(val_fraction=0.25, image_size=64)
    train, held, part = transfer_tasks.task_datasets(data, 1, cfg)
    assert part is not None and len(part.ids) > 0
    rows, _ = gc.ensure_manifest(data)
    patients = rows.set_index("sample_id").patient_key
    assert not set(patients[train.ids]) & set(patients[part.ids])
    assert not set(part.ids) & set(held.ids)  # the held-out fold stays whole
    clean, held_again, none = transfer_tasks.task_datasets(data, 1, gc.FinetuneConfig(image_size=64))
    assert none is None and held_again.ids == held.ids
    assert sorted(clean.ids) == sorted(train.ids + part.ids)
    share = len(part.ids) / (len(part.ids) + len(train.ids))
    assert 0.1 < share < 0.4
    evaluation = gc.classifier_evaluation(held, cfg, part)
    net = TransferClassifier("resnet18", hidden=8)
    metrics = evaluation(net, torch.device("cpu"))
    assert {"val/auc", "val/loss", "val/accuracy", "finetune/plateau_loss"} <= set(metrics)
    assert metrics["finetune/plateau_loss"] != metrics["val/loss"]
    assert "finetune/plateau_loss" in METHOD.metric_keys()
    without = gc.classifier_evaluation(held, cfg)(net, torch.device("cpu"))
    assert (
        without["finetune/plateau_loss"]
        == without["val/loss"]
        == pytest.approx(metrics["val/loss"])
    )


def test_luna_patches_lie_on_the_configured_planes(genesis_sources, tmp_path):
    """Training draws each candidate's plane per epoch; evaluation keeps one per candidate."""
    data = {**genesis_sources["sources"]["luna"], "cache_dir": str(tmp_path / "cache")}
    train, held, _ = transfer_tasks.task_datasets(data, 0, gc.FinetuneConfig(image_size=64, max_train_images=8))
    assert [c.ids == train.caches[0].ids for c in train.caches] == [True] * 3
    i = 0
    views = [train.caches[p][train.ids[i]] for p in range(3)]
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[0], views[2])

    def plane_of(image: torch.Tensor) -> int:  # which cached view's 64 px centre it is
        return next(
            p for p in range(3) if np.allclose(image[0].numpy(), views[p][16:80, 16:80], atol=1e-3)
        )

    drawn = {plane_of(train[0][0]) for _ in range(12)}
    assert len(drawn) > 1
    assert held.planes is not None and set(held.planes) <= {0, 1, 2}
    first = [held[k][0] for k in range(4)]
    assert all(torch.equal(a, held[k][0]) for k, a in enumerate(first))
    axial, _, _ = transfer_tasks.task_datasets(
        data, 0, gc.FinetuneConfig(image_size=64, max_train_images=8, planes=["axial"])
    )
    assert len(axial.caches) == 1
