"""simclr_detection: pools and splits, weight loading, and both stages learning (TINY)."""

import numpy as np
import pytest
import torch

from raysuite.methods import simclr_detection as sd
from raysuite.methods.base import StageConfigs, StageInputs
from raysuite.train.loop import STATE_FILE, fit, seed_everything
from raysuite.train.runtime import LocalRuntime


def _data(root, tmp_path):
    return {"format": "vindr_cxr", "root": str(root), "cache_dir": str(tmp_path / "cache")}


def _cfg(stage, **extra):
    method = sd.METHOD
    return method.stages[stage].config.model_validate({**method.tiny[stage], **extra})


def test_pools_are_nested_patient_safe_and_leave_eval_alone(vindr_root, tmp_path):
    data = _data(vindr_root, tmp_path)
    by_fraction = {f: sd.splits(data, f, pool_seed=0) for f in (0.0, 0.3, 0.6)}
    base = by_fraction[0.0]
    assert (base.role != "pool").all() and set(base.role) == {"finetune", "val", "test"}
    assert base.labels.map(len).min() > 0  # abnormal images only (seed §2.1)
    pools = {f: set(df[df.role == "pool"].sample_id) for f, df in by_fraction.items()}
    assert pools[0.3] < pools[0.6] and len(pools[0.3]) > 0  # nested, and 30 % is not empty
    train = set(base[base.role == "finetune"].sample_id)
    assert pools[0.6] <= train
    for df in by_fraction.values():  # val and test never move
        assert (df.role.isin(["val", "test"]) == base.role.isin(["val", "test"])).all()
        evaluation = df[df.role.isin(["val", "test"])]
        assert not set(evaluation.patient_key) & set(
            df[df.role.isin(["finetune", "pool"])].patient_key
        )
    assert len(pools[0.6]) == pytest.approx(
        0.6 * len(train), abs=len(set().union(*base.labels)) + 1
    )
    other = sd.splits(data, 0.3, pool_seed=1)
    assert set(other[other.role == "pool"].sample_id) != pools[0.3]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_simclr_encoder_loads_into_faster_rcnn_strictly(arch, tmp_path):
    net = sd.SimCLRNet(_cfg("pretrain", arch=arch))
    with torch.no_grad():
        net.encoder.layer1[0].conv1.weight.fill_(0.125)
    torch.save({"model": net.state_dict()}, tmp_path / STATE_FILE)
    det = sd.detector(_cfg("finetune", arch=arch, frozen_bn=True, trainable_layers=3))
    sd.load_simclr_backbone(det, tmp_path)  # asserts no missing or unexpected keys
    assert torch.all(det.backbone.body.layer1[0].conv1.weight == 0.125)
    assert not any("head" in k for k in det.backbone.body.state_dict())
    # frozen BN and 3 trainable stages (seed's Faster R-CNN fine-tuning, every arm alike)
    assert (
        not det.backbone.body.conv1.weight.requires_grad
        and det.backbone.body.layer4[0].conv1.weight.requires_grad
    )


def _simclr_checkpoint(tmp_path, fill: float = 0.125):
    net = sd.SimCLRNet(_cfg("pretrain", arch="resnet50"))
    with torch.no_grad():
        for p in net.encoder.parameters():
            p.fill_(fill)
    torch.save({"model": net.state_dict()}, tmp_path / STATE_FILE)
    return tmp_path


def _coco_inputs(upstream=None, **extra):
    cfg = _cfg(
        "finetune",
        **(
            {"arch": "resnet50", "weights": "coco", "frozen_bn": True, "trainable_layers": 3}
            | extra
        ),
    )
    return StageInputs(cfg, {}, upstream, 0)


def test_baseline_arm_starts_from_the_cached_coco_detector(pretrained_cache):
    coco = pretrained_cache.place(sd.COCO_ARCH, "coco")
    det = sd.initialised_detector(_coco_inputs())
    own = det.state_dict()
    for key in ("backbone.body.conv1.weight", "backbone.body.layer3.2.bn2.running_var", "backbone.fpn.layer_blocks.0.0.weight",
                "rpn.head.conv.0.0.weight", "roi_heads.box_head.fc7.weight"):  # fmt: skip
        assert torch.equal(own[key], coco[key]), key
    # COCO's 91-class predictor is not loaded: the detector's own 15 outputs start fresh
    assert det.roi_heads.box_predictor.cls_score.weight.shape[0] == sd.NUM_CLASSES
    assert sd.pretrained_needs(
        {"pretrain": {"fraction": 0.0}, "finetune": _coco_inputs().cfg.model_dump()}
    ) == [sd.pretrained.Need("finetune.weights", sd.COCO_ARCH)]


def test_simclr_arm_takes_its_body_from_simclr_and_the_rest_from_coco(pretrained_cache, tmp_path):
    coco = pretrained_cache.place(sd.COCO_ARCH, "coco")
    det = sd.initialised_detector(_coco_inputs(upstream=_simclr_checkpoint(tmp_path)))
    own = det.state_dict()
    assert torch.all(own["backbone.body.layer2.0.conv1.weight"] == 0.125)  # SimCLR's body
    assert torch.equal(
        own["backbone.fpn.layer_blocks.0.0.weight"], coco["backbone.fpn.layer_blocks.0.0.weight"]
    )
    assert torch.equal(own["rpn.head.conv.0.0.weight"], coco["rpn.head.conv.0.0.weight"])
    # the same treatment as the baseline arm: frozen BN, the stem and layer1 frozen
    assert type(det.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"
    assert (
        not det.backbone.body.layer1[0].conv1.weight.requires_grad
        and det.backbone.body.layer2[0].conv1.weight.requires_grad
    )
    # weights none: the SimCLR body with a random FPN and heads (no file needed)
    det = sd.initialised_detector(_coco_inputs(upstream=tmp_path, weights="none"))
    assert torch.all(det.backbone.body.layer2[0].conv1.weight == 0.125)
    assert not torch.equal(
        det.state_dict()["rpn.head.conv.0.0.weight"], coco["rpn.head.conv.0.0.weight"]
    )


def test_imagenet_baseline_loads_the_body(pretrained_cache):
    imagenet = pretrained_cache.place("resnet50", "imagenet")
    det = sd.initialised_detector(_coco_inputs(weights="imagenet"))
    body = det.backbone.body.state_dict()
    assert torch.equal(body["layer4.2.conv3.weight"], imagenet["layer4.2.conv3.weight"])
    assert torch.equal(body["bn1.running_mean"], imagenet["bn1.running_mean"])
    assert sd.weights_arch("imagenet", "resnet50") == "resnet50"


def test_files_whose_keys_do_not_fit_are_refused(pretrained_cache, tmp_path):
    # a ResNet-18 placed as ResNet-50's ImageNet file: wrong shapes, named with the file
    pretrained_cache.place("resnet50", "imagenet", pretrained_cache.state("resnet18"))
    with pytest.raises(ValueError, match="ResNet50_Weights|resnet50-"):
        sd.initialised_detector(_coco_inputs(weights="imagenet"))
    bad = tmp_path / "not-a-detector.pt"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not-a-detector.pt"):
        sd.initialised_detector(_coco_inputs(weights=str(bad)))
    with pytest.raises(sd.pretrained.WeightsUnavailable, match="not-a-detector.pt"):
        sd.pretrained.check_fit(sd.weights_arch(str(bad), "resnet50"), bad)
    # not in the cache (tests are offline): refused with where it looked, never trained from scratch
    pretrained_cache.clear()
    with pytest.raises(sd.pretrained.WeightsUnavailable, match="not in the cache"):
        sd.initialised_detector(_coco_inputs())


def test_check_refuses_arms_that_cannot_mean_what_they_say():
    def errors(fraction, **fine):
        pre = _cfg("pretrain", arch="resnet50", fraction=max(fraction, 0.1)).model_copy(update={"fraction": fraction})
        base = {"arch": "resnet50", "weights": "coco", "frozen_bn": True, "trainable_layers": 3}
        return [k for k, _ in sd.check(StageConfigs({"pretrain": pre, "finetune": _cfg("finetune", **(base | fine))}))]

    assert errors(0.0) == [] and errors(0.5) == []  # the seed's arms: COCO, SimCLR over COCO
    assert errors(0.5, arch="resnet18", weights="none") == ["finetune.arch"]
    assert errors(0.0, arch="resnet18") == ["finetune.weights"]  # no COCO ResNet-18 detector
    assert errors(0.5, weights="imagenet") == [
        "finetune.weights"
    ]  # SimCLR would overwrite the body
    assert errors(0.0, weights="imagenet") == []
    assert errors(0.0, weights="none") == [
        "finetune.frozen_bn"
    ]  # frozen identity BN on a random body
    assert errors(0.0, weights="none", frozen_bn=False, trainable_layers=5) == []
    assert errors(0.5, weights="none") == []  # the SimCLR body has statistics to freeze


def test_finetune_lr_is_the_1x_step_schedule():
    cfg = sd.FinetuneConfig()
    assert (cfg.epochs, cfg.lr_milestones, cfg.lr_gamma, cfg.warmup_steps, cfg.weights) == (
        12,
        (8, 11),
        0.1,
        500,
        "coco",
    )
    per_epoch, total = 1000, 12000
    lr = [
        sd.finetune_lr(cfg, e * per_epoch + 999, total) for e in range(12)
    ]  # last step of each epoch
    assert lr[:8] == pytest.approx([2e-4] * 8)
    assert lr[8:11] == pytest.approx([2e-5] * 3) and lr[11] == pytest.approx(2e-6)
    assert sd.finetune_lr(cfg, 0, total) == pytest.approx(2e-7)  # warm-up from lr / 1000
    assert sd.finetune_lr(cfg, 250, total) == pytest.approx(2e-4 * (1e-3 + (1 - 1e-3) * 0.5))
    with pytest.raises(ValueError, match="lr_milestones"):
        sd.FinetuneConfig(lr_milestones=(11, 8))


def test_pretraining_runs_the_same_steps_at_every_fraction(vindr_root, tmp_path):
    data = _data(vindr_root, tmp_path)
    lengths = {}
    for fraction in (0.3, 0.7):
        cfg = _cfg("pretrain", fraction=fraction, batch_size=4, steps_per_epoch=3)
        recipe = sd.pretrain_recipe(StageInputs(cfg, data, None, 0))
        lengths[fraction] = len(recipe.train_loader)
        assert len(list(recipe.train_loader)) == 3
    assert lengths == {0.3: 3, 0.7: 3}
    one_pass = sd.pretrain_recipe(
        StageInputs(_cfg("pretrain", fraction=0.7, batch_size=4), data, None, 0)
    )
    pool = sd.splits(data, 0.7, 0)
    assert (
        len(one_pass.train_loader) == int((pool.role == "pool").sum()) // 4
    )  # tiny: one pass, drop_last


def test_physionet_abnormal_images_without_a_trained_box_are_dropped(tmp_path):
    import pandas as pd

    from raysuite.data.formats import vindr_cxr
    from raysuite.data.synth.vindr_cxr import synth as synth_vindr_cxr

    root = tmp_path / "physionet"
    synth_vindr_cxr(root, cases=16, seed=5, size=(96, 128), layout="physionet")
    csv_path = root / "annotations" / "annotations_train.csv"
    csv = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    findings = csv[csv.class_name != "No finding"]
    extra_only = findings.image_id.iloc[
        0
    ]  # its findings become PhysioNet local labels beyond the 14
    csv.loc[(csv.image_id == extra_only) & (csv.class_name != "No finding"), "class_name"] = (
        "Rib fracture"
    )
    csv.to_csv(csv_path, index=False)
    data = {"format": "vindr_cxr", "root": str(root), "cache_dir": str(tmp_path / "cache")}
    df = sd.splits(data, 0.0, 0)
    assert extra_only not in set(df.sample_id)
    assert set(df.sample_id) == set(findings.image_id) - {extra_only}
    for row in df.to_dict("records"):  # every image kept has a box the detector trains on
        boxes, labels = vindr_cxr.scaled_boxes(row, 128)
        assert len(boxes) > 0 and len(labels) == len(boxes)
    manifest, _ = sd.ensure_manifest(data)  # the image is ingested, only not used
    assert extra_only in set(manifest.sample_id)


def test_report_curve_is_of_test_map40(tmp_path):
    import pandas as pd

    trials = pd.DataFrame({
        "param.stages.pretrain.fraction": ["0.0", "0.0", "0.5", "0.5"],
        "objective": [0.9, 0.9, 0.9, 0.9],  # val/map40_best: not what the curve shows
        "test/map40": [0.2, 0.4, 0.1, 0.3],
    })  # fmt: skip
    (path,) = sd.report(trials, tmp_path, "val/map40")
    table = pd.read_csv(tmp_path / "label_fraction_curve.csv")
    assert path.name == "label_fraction_curve.png"
    assert table.set_index("labelled")["mean"].to_dict() == pytest.approx({0.5: 0.2, 1.0: 0.3})
    renamed = trials.drop(columns="objective").rename(columns={"test/map40": "objective"})
    sd.report(renamed, tmp_path, "test/map40")  # objective test/map40 (renamed to "objective")
    assert pd.read_csv(tmp_path / "label_fraction_curve.csv").set_index("labelled")[
        "mean"
    ].to_dict() == pytest.approx({0.5: 0.2, 1.0: 0.3})


@pytest.fixture(scope="module")
def learnable_data(tmp_path_factory):
    """80 synthetic radiographs, split 60/30/10 so validation holds ~16 abnormal images."""
    from raysuite.data.synth.vindr_cxr import synth as synth_vindr_cxr

    root = tmp_path_factory.mktemp("vindr-learn")
    synth_vindr_cxr(root / "v", cases=80, seed=0, size=(128, 160))
    return {"format": "vindr_cxr", "root": str(root / "v"), "cache_dir": str(root / "cache"),
            "split": {"ratios": [0.6, 0.3, 0.1], "seed": 0}}  # fmt: skip


def test_both_stages_learn_on_synthetic_cxr(learnable_data, tmp_path):
    data = learnable_data
    seed_everything(0)
    pre_cfg = _cfg("pretrain", fraction=0.5, epochs=10, batch_size=8, warmup_epochs=0, lr=0.01)
    pre_rt = LocalRuntime(tmp_path / "pre")
    fit(sd.pretrain_recipe(StageInputs(pre_cfg, data, None, 0)), pre_rt)
    losses = [r["pretrain/loss"] for r in pre_rt.reports]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert pre_rt.reports[-1]["pretrain/images_per_s"] > 0

    # a SimCLR arm may freeze the stem and layer1 (check): 3 stages keep this CPU test short
    fine_cfg = _cfg("finetune", epochs=6, lr=0.01, warmup_steps=20, trainable_layers=3)
    inputs = StageInputs(
        fine_cfg, data, pre_rt.checkpoints[-1], 0, stages={"pretrain": pre_cfg.model_dump()}
    )
    untrained = sd.finetune_recipe(inputs)
    chance = untrained.evaluate(untrained.model, torch.device("cpu"))["val/map40"]
    rt = LocalRuntime(tmp_path / "fine")
    fit(sd.finetune_recipe(inputs), rt)
    fine_losses = [r["finetune/loss"] for r in rt.reports if "finetune/loss" in r]
    assert fine_losses[-1] < fine_losses[0]
    final = rt.reports[-1]
    assert final["val/map40_best"] > chance + 0.03, (
        chance,
        [r.get("val/map40") for r in rt.reports],
    )
    assert "test/map40" in final and np.isfinite(final["test/map40"])
    assert any(k.startswith("test/ap40/") for k in final)
