"""The patch-grid models of seed 003: the base model (§3.1, Li et al.'s Figure 2) with
optional anti-aliased downsampling (§3.3, Zhang's BlurPool), and the two-branch model with
a PAC-CRF on top (Figure 3).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from raysuite.methods.nn.pac_crf import PacCrf
from raysuite.methods.nn.weights import load_imagenet_weights


def blur_backbone(
    arch: str, antialias: bool, blur_size: int, weights: str | Path | None = None
) -> nn.Module:
    """timm ResNet ``arch`` without global pooling and classifier: (B, 3, S, S) ->
    (B, C, S/32, S/32) through ``forward_features``.

    ``antialias`` (Zhang, as the seed's §3.3): a binomial BlurPool of ``blur_size`` taps
    before every stride-2 step after the stem: the max-pool becomes max (stride 1) + blur,
    each block's strided 3x3 conv becomes conv (stride 1) + BN + ReLU + blur (timm's
    ``aa_layer``), and each strided 1x1 shortcut becomes blur + 1x1 conv (stride 1). The 7x7
    stem conv keeps its stride, as in Zhang's ResNets (``pool_only``). ``weights``: a local
    ImageNet state dict file of plain ``arch`` (torchvision's or timm's keys: the recipe gets
    it from ``StageInputs.weights_file``), loaded before the shortcuts are rebuilt (BlurPool
    has no weights, so every key still matches). A file whose keys or shapes do not fit
    ``arch`` raises ``ValueError`` naming it (:func:`~raysuite.methods.nn.weights.load_imagenet_weights`).
    """
    import timm
    from timm.layers.blur_pool import BlurPool2d

    aa = _blur_class(BlurPool2d, blur_size) if antialias else None
    model = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="", aa_layer=aa)
    if weights:
        load_imagenet_weights(model, weights)
    if antialias:
        for module in list(model.modules()):
            down = getattr(module, "downsample", None)
            conv = down[0] if isinstance(down, nn.Sequential) else None
            if (
                isinstance(down, nn.Sequential)
                and isinstance(conv, nn.Conv2d)
                and conv.stride == (2, 2)
            ):
                conv.stride = (1, 1)
                module.downsample = nn.Sequential(BlurPool2d(conv.in_channels, blur_size, 2), *down)
    return model


def _blur_class(blur: type[nn.Module], size: int) -> type[nn.Module]:
    """``blur`` with ``size`` taps as a class (timm's ResNet stem needs a class, not a partial)."""

    def init(
        self: nn.Module, channels: int | None = None, stride: int = 2, **kwargs: object
    ) -> None:
        blur.__init__(self, channels, filt_size=size, stride=stride, **kwargs)

    return type(f"BlurPool2d_{size}", (blur,), {"__init__": init})


class PatchGridNet(nn.Module):
    """The base model (seed 003 §3.1): backbone feature map resized (bilinear) to P x P, then
    conv 3x3 + BN + ReLU and conv 1x1 to K channels: (B, 1, S, S) in [-1, 1] ->
    (B, K, P, P) logits, p_j^k = sigmoid. The grey image is repeated to 3 channels."""

    def __init__(self, backbone: nn.Module, classes: int, grid: int, head_channels: int = 512):
        super().__init__()
        self.backbone, self.grid = backbone, grid
        width = cast(int, backbone.num_features)  # a timm model's (unpooled) feature channels
        self.head = nn.Sequential(
            nn.Conv2d(width, head_channels, 3, padding=1, bias=False), nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True), nn.Conv2d(head_channels, classes, 1),
        )  # fmt: skip

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, C, P, P) backbone features on the patch grid."""
        # a timm model's unpooled (B, C, h, w) feature map (nn.Module's typing cannot see it)
        forward_features = cast(
            Callable[[torch.Tensor], torch.Tensor], self.backbone.forward_features
        )
        fmap = forward_features(images.expand(-1, 3, -1, -1))
        return F.interpolate(
            fmap, size=(self.grid, self.grid), mode="bilinear", align_corners=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class CrfNet(nn.Module):
    """Figure 3: the (frozen) base model gives the unary logits; a second branch, two conv
    layers each followed by ReLU and BN (§3.3) on the base's grid features, gives the
    features f of the PAC kernel; the PAC-CRF returns (B, K, P, P) logits. The base stays in
    eval mode and receives no gradient."""

    def __init__(
        self, base: PatchGridNet, feature_channels: int, size: int, steps: int, hidden: int = 256
    ):
        super().__init__()
        self.base = base.eval()
        for p in self.base.parameters():
            p.requires_grad_(False)
        width = cast(int, base.backbone.num_features)  # a timm model's feature channels
        self.branch = nn.Sequential(
            nn.Conv2d(width, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(hidden),
            nn.Conv2d(hidden, feature_channels, 3, padding=1), nn.ReLU(inplace=True), last := nn.BatchNorm2d(feature_channels),
        )  # fmt: skip
        # small feature scale at start: kernel values near 1, so the PAC starts as a plain conv
        nn.init.constant_(last.weight, 0.1)
        classifier = self.base.head[-1]
        assert isinstance(classifier, nn.Conv2d)  # PatchGridNet's head ends in its 1x1 conv to K
        self.crf = PacCrf(classifier.out_channels, size, steps)

    def train(self, mode: bool = True) -> CrfNet:
        super().train(mode)
        self.base.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            grid = self.base.features(images)
            unary = self.base.head(grid)
        return self.crf(unary, self.branch(grid))
