"""simclr_detection: pools and splits, weight loading, and both stages learning (TINY)."""

import numpy as np
import pytest
import torch

from raysuite.methods import simclr_detection as sd
from raysuite.methods.base import StageInputs
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
        assert not set(evaluation.patient_key) & set(df[df.role.isin(["finetune", "pool"])].patient_key)
    assert len(pools[0.6]) == pytest.approx(0.6 * len(train), abs=len(set().union(*base.labels)) + 1)
    other = sd.splits(data, 0.3, pool_seed=1)
    assert set(other[other.role == "pool"].sample_id) != pools[0.3]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_simclr_encoder_loads_into_faster_rcnn_strictly(arch, tmp_path):
    net = sd.SimCLRNet(_cfg("pretrain", arch=arch))
    with torch.no_grad():
        net.encoder.layer1[0].conv1.weight.fill_(0.125)
    torch.save({"model": net.state_dict()}, tmp_path / STATE_FILE)
    det = sd.detector(_cfg("finetune", arch=arch), loaded=True)
    sd.load_simclr_backbone(det, tmp_path)  # asserts no missing or unexpected keys
    assert torch.all(det.backbone.body.layer1[0].conv1.weight == 0.125)
    assert not any("head" in k for k in det.backbone.body.state_dict())
    # frozen BN and 3 trainable stages by default (seed's Faster R-CNN fine-tuning)
    assert not det.backbone.body.conv1.weight.requires_grad and det.backbone.body.layer4[0].conv1.weight.requires_grad


def test_weight_files_for_the_baseline_arm(tmp_path):
    cfg = _cfg("finetune")
    imagenet = sd.resnet("resnet18").state_dict()
    imagenet["layer2.0.conv1.weight"].fill_(0.5)
    torch.save(imagenet, tmp_path / "imagenet.pt")
    det = sd.detector(cfg, loaded=True)
    sd.load_weights_file(det, str(tmp_path / "imagenet.pt"))
    assert torch.all(det.backbone.body.layer2[0].conv1.weight == 0.5)
    coco = sd.detector(cfg, loaded=True).state_dict()
    coco["rpn.head.conv.0.0.weight"].fill_(0.25)
    coco["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(91, 1024)  # COCO's 91 classes
    torch.save({"model": coco}, tmp_path / "coco.pt")
    det = sd.detector(cfg, loaded=True)
    sd.load_weights_file(det, str(tmp_path / "coco.pt"))
    assert torch.all(det.rpn.head.conv[0][0].weight == 0.25)
    assert det.roi_heads.box_predictor.cls_score.weight.shape[0] == sd.NUM_CLASSES
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="neither"):
        sd.load_weights_file(det, str(tmp_path / "bad.pt"))


def test_check_refuses_mismatched_arms():
    pre = _cfg("pretrain", fraction=0.5).model_dump()
    fine = _cfg("finetune", arch="resnet50", weights="/w.pt").model_dump()
    keys = [k for k, _ in sd.check({"pretrain": pre, "finetune": fine})]
    assert keys == ["finetune.arch", "finetune.weights"]
    assert sd.check({"pretrain": {**pre, "fraction": 0.0}, "finetune": fine}) == []


@pytest.fixture(scope="module")
def learnable_data(tmp_path_factory):
    """80 synthetic radiographs, split 60/30/10 so validation holds ~16 abnormal images."""
    from raysuite.data.formats import vindr_cxr

    root = tmp_path_factory.mktemp("vindr-learn")
    vindr_cxr.synth(root / "v", cases=80, seed=0, size=(128, 160))
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

    fine_cfg = _cfg("finetune", epochs=6, lr=0.01, warmup_steps=20)
    inputs = StageInputs(fine_cfg, data, pre_rt.checkpoints[-1], 0, stages={"pretrain": pre_cfg.model_dump()})
    untrained = sd.finetune_recipe(inputs)
    chance = untrained.evaluate(untrained.model, torch.device("cpu"))["val/map40"]
    rt = LocalRuntime(tmp_path / "fine")
    fit(sd.finetune_recipe(inputs), rt)
    fine_losses = [r["finetune/loss"] for r in rt.reports if "finetune/loss" in r]
    assert fine_losses[-1] < fine_losses[0]
    final = rt.reports[-1]
    assert final["val/map40_best"] > chance + 0.03, (chance, [r.get("val/map40") for r in rt.reports])
    assert "test/map40" in final and np.isfinite(final["test/map40"])
    assert any(k.startswith("test/ap40/") for k in final)
