"""Loading user-supplied ImageNet weights (nothing is ever downloaded)."""

from __future__ import annotations

import torch
from torch import nn

CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "pre_logits.")  # pre_logits: timm VGG


def load_imagenet_weights(module: nn.Module, path: str) -> None:
    """Load a local ImageNet classification state dict of ``module``'s architecture.

    The file holds a torchvision or timm model's state dict (keys ``conv1.weight``,
    ``layer1.0.conv1.weight``, ...), bare or wrapped under ``"state_dict"`` or ``"model"``.
    Classifier keys (``fc.*``, ``classifier.*``, ``head.*``, ``pre_logits.*``) are dropped from the file and
    left as they are in ``module`` (a new task head). Every other key of ``module`` must be
    present with the same shape, except BatchNorm ``num_batches_tracked`` counters (absent
    from torchvision's older files, e.g. the ResNet-34 fastai v1 used); keys ``module`` does
    not have (another depth of the same family) are an error too. Raises ``ValueError``
    naming the file and a few offending keys.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    target = {k: v for k, v in module.state_dict().items() if not k.startswith(CLASSIFIER_PREFIXES)}
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [k for k in state if k in target and state[k].shape != target[k].shape]
    problems = {"missing": missing, "unexpected": unexpected, "wrong shape": wrong_shape}
    if any(problems.values()):
        detail = "; ".join(f"{name}: {keys[:5]}" for name, keys in problems.items() if keys)
        raise ValueError(f"{path} does not match {type(module).__name__} ({detail})")
    module.load_state_dict({**module.state_dict(), **state})
