"""TimmUNet (seed 004 segmenter): shapes, gradients, frozen encoder, local weight loading."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from raysuite.methods.nn.unet import TimmUNet, load_encoder_weights

TINY = {"encoder": "resnet18", "decoder_channels": (64, 32, 16, 8, 8)}


@pytest.fixture
def model() -> TimmUNet:
    torch.manual_seed(0)
    return TimmUNet(**TINY)


def _encoder_bns(model: TimmUNet) -> list[nn.BatchNorm2d]:
    return [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]


def test_output_shape_and_skips(model):
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2, 64, 64)
    # resnet features at strides 2..32: blocks at strides 16, 8, 4, 2 take skips, the last none
    assert model.skips == (3, 2, 1, 0, None)


def test_single_channel_input_and_classes():
    net = TimmUNet(in_chans=1, num_classes=3, **TINY)
    assert net(torch.rand(1, 1, 32, 96)).shape == (1, 3, 32, 96)


def test_rejects_bad_sizes(model):
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.rand(1, 3, 48, 64))
    with pytest.raises(ValueError, match="5 decoder blocks"):
        TimmUNet("resnet18", decoder_channels=(16, 8))


def test_gradient_reaches_encoder(model):
    model(torch.rand(2, 3, 64, 64)).square().mean().backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0


def test_frozen_encoder_keeps_bn_stats(model):
    model.freeze_encoder(True)
    model.train()
    assert all(not bn.training for bn in _encoder_bns(model))
    assert all(m.training for m in model.decoder.modules())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model(torch.rand(2, 3, 64, 64)).square().mean().backward()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k

    model.freeze_encoder(False)
    assert all(bn.training for bn in _encoder_bns(model))
    model(torch.rand(2, 3, 64, 64))
    assert not torch.equal(model.encoder.bn1.running_mean, before["bn1.running_mean"])


def test_eval_then_train_keeps_frozen_bn_in_eval(model):
    model.freeze_encoder(True)
    model.eval()
    model.train()
    assert all(not bn.training for bn in _encoder_bns(model))


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_load_encoder_weights(model, tmp_path, wrapper):
    torch.manual_seed(1)
    state = timm.create_model("resnet18").state_dict()
    # torchvision's older ImageNet files have no num_batches_tracked counters
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    assert not torch.equal(model.encoder.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    load_encoder_weights(model, str(path))
    assert torch.equal(model.encoder.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.encoder.bn1.running_var, state["bn1.running_var"])


def test_load_encoder_weights_rejects_missing_keys(model, tmp_path):
    state = timm.create_model("resnet18").state_dict()
    del state["layer4.1.conv2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"broken\.pth.*layer4\.1\.conv2\.weight"):
        load_encoder_weights(model, str(path))


def test_load_encoder_weights_rejects_other_depth(model, tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(ValueError, match="unexpected"):
        load_encoder_weights(model, str(path))


def test_imagenet_weights_load_into_a_classifier_with_a_new_head(tmp_path):
    from raysuite.methods.nn.weights import load_imagenet_weights

    path = tmp_path / "resnet18.pth"
    source = timm.create_model("resnet18").state_dict()
    torch.save(source, path)
    model = timm.create_model("resnet18", num_classes=1)
    head = model.fc.weight.clone()
    load_imagenet_weights(model, str(path))
    assert torch.equal(model.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    assert torch.equal(model.fc.weight, head) and model.fc.weight.shape == (1, 512)
