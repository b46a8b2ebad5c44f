"""U-Net with a timm CNN encoder for the pneumothorax segmenter of seed 004.

The thesis (seed 004, §4.3 and Table 4.2) trains a fastai v1 ``unet_learner`` with a
ResNet-34 encoder at 256 px, two output classes and a softmax. The decoder here is the plain
U-Net of segmentation_models_pytorch's ``Unet`` (nearest upsampling, skip concatenation,
two conv3x3-BN-ReLU per block, a conv3x3 head), not fastai's ``DynamicUnet`` (pixel shuffle,
self-attention option, final cross connection); the thesis' reproduction only needs a
ResNet-34 U-Net trained with frozen, then unfrozen, encoder.

The encoder is built with ``pretrained=False``; its ImageNet weights (torchvision's, which
fastai v1 used) come from a local state-dict file through :func:`load_encoder_weights`, the
file the sweep driver resolved (:mod:`raysuite.methods.nn.pretrained`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import timm
import torch
from timm.models import FeatureInfo
from torch import nn

from raysuite.methods.nn.weights import load_imagenet_weights


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip (if any), two conv3x3-BN-ReLU.

    (B, in_ch, h, w) and skip (B, skip_ch, 2h, 2w) or None -> (B, out_ch, 2h, 2w)
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.convs = nn.Sequential(
            _conv_bn_relu(in_ch + skip_ch, out_ch), _conv_bn_relu(out_ch, out_ch)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


def feature_info(encoder: nn.Module) -> FeatureInfo:
    """The ``feature_info`` (channels and stride of each feature) of a timm ``features_only``
    model (an attribute timm sets, so ``nn.Module``'s typing cannot see it)."""
    return cast(FeatureInfo, encoder.feature_info)


class TimmUNet(nn.Module):
    """U-Net on a timm ``features_only`` encoder (seed 004: ResNet-34, 256 px, 2 classes).

    forward: (B, in_chans, H, W) -> logits (B, num_classes, H, W); H and W must be multiples
    of the deepest feature stride (32 for ResNets). Softmax over dim 1 gives the thesis'
    per-pixel class probabilities.

    The encoder's feature strides must be increasing powers of two. The decoder starts at the
    deepest feature (stride ``R``) and has ``log2(R)`` blocks, one per halving of the stride
    until the input resolution; block ``k`` concatenates the encoder feature of its output
    stride when there is one. For ResNets (5 features at strides 2..32) that is one block per
    feature, the last one without a skip; ``decoder_channels`` gives each block's width.
    """

    def __init__(
        self,
        encoder: str = "resnet34",
        num_classes: int = 2,
        in_chans: int = 3,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    ):
        super().__init__()
        self.encoder = timm.create_model(
            encoder, features_only=True, pretrained=False, in_chans=in_chans
        )
        channels = feature_info(self.encoder).channels()
        reductions = feature_info(self.encoder).reduction()
        depth = round(math.log2(reductions[-1]))
        if any(r & (r - 1) for r in reductions) or sorted(set(reductions)) != reductions:
            raise ValueError(
                f"{encoder}: feature strides {reductions} are not increasing powers of two"
            )
        if len(decoder_channels) != depth:
            raise ValueError(
                f"{encoder}: deepest stride {reductions[-1]} needs {depth} decoder blocks, "
                f"got decoder_channels={decoder_channels}"
            )
        self.stride = reductions[-1]
        index = {r: i for i, r in enumerate(reductions)}
        # encoder feature index concatenated by each decoder block (None: no skip)
        self.skips = tuple(index.get(self.stride >> (k + 1)) for k in range(depth))
        blocks, in_ch = [], channels[-1]
        for i, out_ch in zip(self.skips, decoder_channels, strict=True):
            blocks.append(DecoderBlock(in_ch, 0 if i is None else channels[i], out_ch))
            in_ch = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, num_classes, 3, padding=1)
        self.encoder_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of {self.stride}")
        features = self.encoder(x)
        y = features[-1]
        for block, i in zip(self.decoder, self.skips, strict=True):
            y = block(y, None if i is None else features[i])
        return self.head(y)

    def freeze_encoder(self, frozen: bool) -> None:
        """Hold (``True``) or release the encoder's BatchNorm statistics, for frozen epochs
        of seed 004 Table 4.2 (6 frozen + 12 unfrozen) with ``train_bn`` off.

        Frozen: the encoder's BatchNorm layers stay in eval mode (running statistics fixed)
        even under ``model.train()``. fastai v1's default (``train_bn=True``) keeps them
        training, so the recipe calls this only when ``train_bn`` is off. Parameters keep
        ``requires_grad``: DDP registers them once, so the caller freezes the weights by
        giving the encoder's parameter group a learning rate of 0.
        """
        self.encoder_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> TimmUNet:
        super().train(mode)
        if self.encoder_frozen:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def load_encoder_weights(model: TimmUNet, path: str | Path) -> None:
    """Load a local ImageNet classification state dict of the encoder's architecture into
    ``model.encoder`` (see :func:`~raysuite.methods.nn.weights.load_imagenet_weights`)."""
    load_imagenet_weights(model.encoder, path)
