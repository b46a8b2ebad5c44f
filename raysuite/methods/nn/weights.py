"""Loading a local ImageNet state dict into a model (see :mod:`raysuite.methods.nn.pretrained`
for where the file comes from)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from raysuite.methods.nn.pretrained import CLASSIFIER_PREFIXES, load_into, load_state


def load_imagenet_weights(module: nn.Module, path: str | Path) -> None:
    """Load a local ImageNet classification state dict of ``module``'s architecture.

    The file holds a torchvision or timm model's state dict (keys ``conv1.weight``,
    ``layer1.0.conv1.weight``, ...), bare or wrapped under ``"state_dict"`` or ``"model"``,
    or a ``.safetensors`` file. Classifier keys (``fc.*``, ``classifier.*``, ``head.*``,
    ``pre_logits.*``) are dropped from the file and left as they are in ``module`` (a new
    task head). Every other key of ``module`` must be present with the same shape, except
    BatchNorm ``num_batches_tracked`` counters (absent from torchvision's older files, e.g.
    the ResNet-34 fastai v1 used); keys ``module`` does not have (another depth of the same
    family) are an error too. Raises ``ValueError`` naming the file and a few offending keys.
    """
    load_into(module, load_state(Path(path)), CLASSIFIER_PREFIXES, origin=str(path))
