"""Pretrained weights through the libraries' own caches (offline: files placed where
torchvision and timm look), refused when they cannot be had or do not fit."""

from __future__ import annotations

import urllib.error

import torch

from raysuite.methods.nn import pretrained
from raysuite.methods.nn.pretrained import Source, WeightsUnavailable


def _raises(fn, *args, **kwargs) -> str:
    try:
        fn(*args, **kwargs)
    except WeightsUnavailable as err:
        return str(err)
    raise AssertionError("no WeightsUnavailable")


def test_named_weights_resolve_through_torchvision_and_timm_caches(pretrained_cache):
    placed = pretrained_cache.place("resnet18")
    path = pretrained.local_file("resnet18", "imagenet")
    assert path == pretrained.cache_path(Source("torchvision", "ResNet18_Weights.IMAGENET1K_V1"))
    assert path.parent.name == "checkpoints" and path.name.startswith(
        "resnet18-"
    )  # torchvision's own file name
    loaded = pretrained.check_fit("resnet18", path)
    assert all(torch.equal(loaded[k], v) for k, v in placed.items())
    # an architecture torchvision lacks: timm's default pretrained tag, from the HF cache
    timm_state = pretrained_cache.place("convnext_atto")
    path = pretrained.local_file("convnext_atto", "imagenet")
    assert "models--timm--convnext_atto" in str(path) and path.suffix == ".safetensors"
    assert torch.equal(
        pretrained.check_fit("convnext_atto", path)["stem.0.weight"], timm_state["stem.0.weight"]
    )


def test_a_torchvision_file_fits_the_timm_model_a_method_builds(pretrained_cache):
    import timm

    placed = pretrained_cache.place("resnet34")
    model = timm.create_model("resnet34", pretrained=False, num_classes=3)
    head = model.fc.weight.clone()
    pretrained.load_into(
        model, pretrained.load_state(pretrained.local_file("resnet34", "imagenet"))
    )
    assert torch.equal(model.layer4[2].conv2.weight, placed["layer4.2.conv2.weight"])
    assert torch.equal(model.fc.weight, head)  # the task head stays new


def test_unavailable_weights_say_where_they_were_looked_for(
    pretrained_cache, tmp_path, monkeypatch
):
    def offline(url: str, **kwargs: object) -> None:
        assert url.startswith("https://download.pytorch.org/models/resnet50-")
        raise urllib.error.URLError("no route")  # what a machine without the network gets

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    message = _raises(pretrained.local_file, "resnet50", "imagenet", download=True)
    assert "ResNet50_Weights.IMAGENET1K_V1" in message and "hub/checkpoints/resnet50-" in message
    assert "download failed (URLError)" in message
    assert "not in the cache" in _raises(
        pretrained.local_file, "resnet50", "imagenet"
    )  # workers never download
    assert "no 'coco' weights" in _raises(pretrained.local_file, "resnet50", "coco")
    assert "not a torchvision weight enum" in _raises(
        pretrained.local_file, "resnet50", "torchvision:Nope.V1"
    )
    assert "no such file" in _raises(
        pretrained.local_file, "resnet50", str(tmp_path / "missing.pt")
    )
    assert (
        pretrained.local_file("resnet50", "none") is None
        and pretrained.local_file("resnet50", None) is None
    )


def test_a_file_whose_keys_do_not_fit_is_refused_naming_it(pretrained_cache, tmp_path):
    path = tmp_path / "resnet18-as-resnet34.pt"
    torch.save({"state_dict": pretrained_cache.state("resnet18")}, path)
    message = _raises(pretrained.check_fit, "resnet34", path)
    assert str(path) in message and "missing" in message and "layer1.2." in message
    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a tensor file")
    assert "not a readable state dict" in _raises(pretrained.check_fit, "resnet18", garbage)
    # the COCO detector: its box predictor is the task head, the rest must fit
    coco = pretrained_cache.state("fasterrcnn_resnet50_fpn")
    coco["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(15, 1024)
    coco.pop("rpn.head.conv.0.0.weight")
    torch.save(coco, tmp_path / "coco.pth")
    assert "rpn.head.conv.0.0.weight" in _raises(
        pretrained.check_fit, "fasterrcnn_resnet50_fpn", tmp_path / "coco.pth"
    )


def test_describe_names_the_library_source():
    assert (
        pretrained.describe("resnet50", "imagenet")
        == "imagenet (torchvision:ResNet50_Weights.IMAGENET1K_V1)"
    )
    assert pretrained.describe("resnet50", "none") == "none"
    assert pretrained.describe("resnet50", "/w/r50.pth") == "/w/r50.pth"
