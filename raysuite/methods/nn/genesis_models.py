"""Models of seed 002 (Song 2020): the 2-D restoration U-Net of Models Genesis and the
classifier its encoder transfers to.

- :class:`RestorationUNet`: a U-Net on a timm VGG-16 (BN) or ResNet-50 encoder (§4.1.1,
  Figure 4.7). It maps (B, 3, S, S) in [0, 1] to (B, 1, S, S) through a sigmoid, restoring
  the clean image under an MSE loss (Models Genesis' eq.: L = ||x - f(T(x))||²). The grey
  image is repeated to 3 channels, so ImageNet encoders load unchanged.
- ``norm="instance"`` swaps every BatchNorm for an affine InstanceNorm (§3.1.11 compares
  the two, after Zhou et al.). :func:`set_norm` does the swap.
- :class:`TransferClassifier` (§4.2.1.6, Figure 4.8): encoder, global average pooling,
  dropout 0.5, a dense layer with ReLU and an L2 penalty, dropout 0.5, one output logit.
  The loss is binary cross-entropy. :meth:`TransferClassifier.l2_penalty` is Keras'
  ``kernel_regularizer=l2(l)``: l·Σw² of the dense kernel, added to the loss.
- :func:`transfer_encoder` loads the U-Net's encoder into the classifier strictly (no
  missing or unexpected key). :func:`load_imagenet_encoder` loads an ImageNet state dict of
  the full timm or torchvision model (the file ``finetune.weights`` resolves to through
  :mod:`raysuite.methods.nn.pretrained`) into a ``features_only`` encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import timm
import torch
from torch import nn

from raysuite.methods.nn.unet import TimmUNet, feature_info
from raysuite.methods.nn.weights import load_imagenet_weights

Norm = Literal["batch", "instance"]
M = TypeVar("M", bound=nn.Module)


def set_norm(module: M, norm: Norm) -> M:
    """``module`` with every ``BatchNorm2d`` replaced by ``InstanceNorm2d(affine=True)`` when
    ``norm == "instance"`` (in place; the affine weight and bias carry over)."""
    if norm == "batch":
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            inst = nn.InstanceNorm2d(child.num_features, eps=child.eps, affine=True)
            with torch.no_grad():
                inst.weight.copy_(child.weight)
                inst.bias.copy_(child.bias)
            setattr(module, name, inst)
        else:
            set_norm(child, norm)
    return module


def encoder(name: str, norm: Norm = "batch") -> nn.Module:
    """A timm ``features_only`` encoder on 3 channels (nothing downloaded)."""
    return set_norm(timm.create_model(name, features_only=True, pretrained=False, in_chans=3), norm)


class RestorationUNet(nn.Module):
    """:class:`~raysuite.methods.nn.unet.TimmUNet` with one output channel and a sigmoid,
    its encoder and decoder in ``norm``: (B, 3, S, S) -> (B, 1, S, S), S a multiple of 32."""

    def __init__(self, name: str, norm: Norm = "batch"):
        super().__init__()
        self.net = set_norm(TimmUNet(name, num_classes=1, in_chans=3), norm)

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


class TransferClassifier(nn.Module):
    """Figure 4.8: (B, 3, S, S) -> (B,) logits. The encoder's deepest feature map is
    globally average-pooled, then dropout, dense + ReLU (``hidden`` units, L2-penalised),
    dropout, dense to one logit."""

    def __init__(self, name: str, norm: Norm = "batch", hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        self.encoder = encoder(name, norm)
        width = feature_info(self.encoder).channels()[-1]
        self.dense = nn.Linear(width, hidden)
        self.out = nn.Linear(hidden, 1)
        self.drop = nn.Dropout(dropout)

        self.encoder_frozen = False

    def freeze_encoder(self, frozen: bool) -> None:
        """Head-only warm-up (§4.2.2): the encoder's norm layers keep their statistics
        (eval mode) under ``train()``; the caller sets the encoder's lr to 0."""
        self.encoder_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferClassifier:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.encoder(x)[-1].mean((-2, -1))
        return self.out(self.drop(torch.relu(self.dense(self.drop(pooled))))).squeeze(-1)

    def l2_penalty(self) -> torch.Tensor:
        """Σw² of the dense kernel (Keras ``l2``; multiply by the coefficient)."""
        return self.dense.weight.pow(2).sum()

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.dense.parameters(), *self.out.parameters()]


def transfer_encoder(unet: RestorationUNet, classifier: TransferClassifier) -> None:
    """The pretrained U-Net encoder into the classifier: every key, same shapes (strict)."""
    classifier.encoder.load_state_dict(unet.encoder.state_dict(), strict=True)


def _full_key(feature_key: str, full_keys: set[str]) -> str:
    """A ``features_only`` key -> the full model's key: timm flattens one level of
    Sequential into ``features_0.weight`` where the full model has ``features.0.weight``."""
    if feature_key in full_keys:
        return feature_key
    head, _, rest = feature_key.partition("_")
    return f"{head}.{rest}"


def load_imagenet_encoder(module: nn.Module, name: str, path: str | Path) -> None:
    """Load a local ImageNet classification state dict of architecture ``name`` (timm or
    torchvision keys: torchvision's ``VGG16_BN_Weights.IMAGENET1K_V1`` /
    ``ResNet50_Weights.IMAGENET1K_V1`` files as the sweep driver resolves them, see
    :func:`~raysuite.methods.nn.weights.load_imagenet_weights`) into the ``features_only``
    encoder ``module``: the full timm model takes the file (its classifier aside), then
    each encoder key takes the full model's tensor. Raises ``ValueError`` naming the file."""
    full = timm.create_model(name, pretrained=False)
    load_imagenet_weights(full, path)
    state = full.state_dict()
    keys = set(state)
    mapped = {
        k: state[_full_key(k, keys)] for k in module.state_dict() if _full_key(k, keys) in keys
    }
    missing = [k for k in module.state_dict() if k not in mapped]
    if missing:
        raise ValueError(f"{path}: {name} weights lack encoder keys {missing[:5]}")
    module.load_state_dict(mapped, strict=True)
