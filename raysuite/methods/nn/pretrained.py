"""Pretrained weights as the seeds used them, through the libraries' own caches.

A model field ``weights`` takes ``none``, a name (``imagenet``, ``coco``), an explicit
library source (``torchvision:ResNet50_Weights.IMAGENET1K_V1``, ``timm:resnet50.a1_in1k``)
or a local file (``.pth``/``.pt`` state dict, bare or under ``state_dict``/``model``, or
``.safetensors``). A name resolves per architecture through :data:`ARCHS` to a pinned
torchvision weight enum (the weights of the seeds' era, ``IMAGENET1K_V1``), or for an
architecture torchvision lacks, to timm's default pretrained tag. torchvision files live in
``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``) and timm's in the Hugging Face
cache (``$HF_HOME/hub``): :func:`fetch` reads the cache and downloads only what is missing,
so an offline machine works with files placed there, exactly as the libraries would.

:func:`fit_problems` checks a state dict against the architecture before any trial: every
key of the reference model (its task head aside) present with the same shape. The sweep
driver resolves each distinct file once into shared storage (``raysuite.tune.weights_store``);
workers then load that copy. Nothing here imports Ray.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from torch import nn

NONE = "none"
STATE_FILE = (
    "state_dict.pt"  # a resolved file in shared storage: <storage>/weights/<arch>-<sha>/STATE_FILE
)
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "pre_logits.")  # pre_logits: timm VGG
DOWNLOAD_TIMEOUT_S = 60.0


class WeightsUnavailable(ValueError):
    """The weights a config names cannot be had here (unknown name, not cached and not
    downloadable, unreadable file, keys that do not fit); the message says which and why."""


@dataclass(frozen=True)
class Source:
    """Weights one library publishes: ``library`` and its identifier (a torchvision weight
    enum ``ResNet50_Weights.IMAGENET1K_V1`` or a timm pretrained tag ``resnet34.tv_in1k``)."""

    library: Literal["torchvision", "timm"]
    name: str

    def __str__(self) -> str:
        return f"{self.library}:{self.name}"


@dataclass(frozen=True)
class Arch:
    """A reference architecture: how to build it without weights (for the key check), the
    prefixes of its task head (dropped from the file: a new head is trained), and the
    library source of each weight name."""

    build: Callable[[], nn.Module]
    named: dict[str, str]
    heads: tuple[str, ...] = CLASSIFIER_PREFIXES


def _tv(builder: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, builder)(weights=None, **kwargs)

    return build


def _detector() -> nn.Module:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(_tv("resnet18"), {"imagenet": "torchvision:ResNet18_Weights.IMAGENET1K_V1"}),
    "resnet34": Arch(_tv("resnet34"), {"imagenet": "torchvision:ResNet34_Weights.IMAGENET1K_V1"}),
    "resnet50": Arch(_tv("resnet50"), {"imagenet": "torchvision:ResNet50_Weights.IMAGENET1K_V1"}),
    "resnext50_32x4d": Arch(
        _tv("resnext50_32x4d"), {"imagenet": "torchvision:ResNeXt50_32X4D_Weights.IMAGENET1K_V1"}
    ),
    "vgg16": Arch(_tv("vgg16"), {"imagenet": "torchvision:VGG16_Weights.IMAGENET1K_V1"}),
    "vgg16_bn": Arch(_tv("vgg16_bn"), {"imagenet": "torchvision:VGG16_BN_Weights.IMAGENET1K_V1"}),
    # the COCO detector of seed 000's baseline; its box predictor is the new task head
    "fasterrcnn_resnet50_fpn": Arch(
        _detector,
        {"coco": "torchvision:FasterRCNN_ResNet50_FPN_Weights.COCO_V1"},
        ("roi_heads.box_predictor.",),
    ),
}


def arch_of(name: str) -> Arch:
    """:data:`ARCHS`' entry, or a timm architecture with timm's default pretrained tag."""
    if name in ARCHS:
        return ARCHS[name]

    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return Arch(build, {"imagenet": f"timm:{name}"})


def is_named(value: str | None) -> bool:
    """A name or library source (resolved through a cache), not ``none`` or a file path."""
    return (
        bool(value)
        and value != NONE
        and (value.isidentifier() or value.split(":", 1)[0] in ("torchvision", "timm"))
    )


def source_of(arch: str, value: str | None) -> Source | Path | None:
    """What ``value`` means for ``arch``: None for ``none``, a :class:`Source`, or a local
    file. Raises :class:`WeightsUnavailable` for a name ``arch`` has no weights under."""
    if not value or value == NONE:
        return None
    if not is_named(value):
        return Path(value).expanduser()
    if ":" not in value:
        named = arch_of(arch).named
        if value not in named:
            known = ", ".join(sorted(named)) or "none"
            raise WeightsUnavailable(
                f"{arch} has no '{value}' weights (known: {known}, or a file path)"
            )
        value = named[value]
    library, name = value.split(":", 1)
    return Source(library, name)  # type: ignore[arg-type]


def _torchvision_url(source: Source) -> str:
    import torchvision

    try:
        return torchvision.models.get_weight(source.name).url
    except (ValueError, KeyError, AttributeError) as err:
        raise WeightsUnavailable(
            f"{source}: not a torchvision weight enum ({type(err).__name__})"
        ) from None


def _timm_file(source: Source) -> tuple[str, str]:
    """(Hugging Face repo, file name) of a timm pretrained tag."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(source.name)
    except (RuntimeError, ValueError) as err:
        raise WeightsUnavailable(
            f"{source}: not a timm pretrained tag ({type(err).__name__})"
        ) from None
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsUnavailable(f"{source}: timm publishes no Hugging Face weights for this tag")
    return cfg.hf_hub_id, "model.safetensors"


def cache_path(source: Source) -> Path:
    """Where the library caches ``source`` (whether or not it is there yet)."""
    if source.library == "torchvision":
        return (
            Path(torch.hub.get_dir())
            / "checkpoints"
            / os.path.basename(urlparse(_torchvision_url(source)).path)
        )
    from huggingface_hub import constants

    repo, filename = _timm_file(source)
    return (
        Path(constants.HF_HUB_CACHE)
        / f"models--{repo.replace('/', '--')}"
        / "snapshots"
        / "<revision>"
        / filename
    )


def cached_file(source: Source) -> Path | None:
    """``source``'s file in the library's cache, or None when it is not there."""
    if source.library == "torchvision":
        path = cache_path(source)
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    repo, filename = _timm_file(source)
    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


def fetch(source: Source, download: bool = True) -> Path:
    """``source``'s local file: the library's cache, else (with ``download``) downloaded by
    the library into it. Raises :class:`WeightsUnavailable` saying where it looked."""
    found = cached_file(source)
    if found is not None:
        return found
    where = cache_path(source)
    if not download:
        raise WeightsUnavailable(f"{source}: not in the cache ({where})")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        if source.library == "torchvision":
            torch.hub.load_state_dict_from_url(
                _torchvision_url(source), map_location="cpu", progress=False, check_hash=True
            )
            return cache_path(source)
        from huggingface_hub import hf_hub_download

        repo, filename = _timm_file(source)
        return Path(hf_hub_download(repo, filename))
    except Exception as err:  # noqa: BLE001 - any download failure makes the arm unavailable, with its kind
        raise WeightsUnavailable(
            f"{source}: not in the cache ({where}) and the download failed ({type(err).__name__}); "
            "place the file there or give a local path"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``.safetensors``, or a torch file holding one, bare or
    under ``state_dict`` / ``model``). Raises :class:`WeightsUnavailable` naming the file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsUnavailable(f"{path}: no such file") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is refused with its kind
        raise WeightsUnavailable(
            f"{path}: not a readable state dict ({type(err).__name__})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{path}: not a state dict of tensors")
    return state


def fit_problems(
    target: dict[str, torch.Tensor], state: dict[str, torch.Tensor], heads: tuple[str, ...]
) -> str | None:
    """Why ``state`` does not fit ``target`` (a model's state dict), task heads aside: keys
    missing (BatchNorm ``num_batches_tracked`` counters excepted: torchvision's older files
    lack them), unexpected, or of another shape; None when it fits."""
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    target = {k: v for k, v in target.items() if not k.startswith(heads)}
    problems = {
        "missing": [k for k in target if k not in state and not k.endswith("num_batches_tracked")],
        "unexpected": [k for k in state if k not in target],
        "wrong shape": [k for k in state if k in target and state[k].shape != target[k].shape],
    }
    if not any(problems.values()):
        return None
    return "; ".join(f"{name}: {keys[:5]}" for name, keys in problems.items() if keys)


def check_fit(arch: str, path: Path) -> dict[str, torch.Tensor]:
    """``path``'s state dict when it fits ``arch`` (see :func:`fit_problems`); else raises
    :class:`WeightsUnavailable` naming the file and a few offending keys."""
    state = load_state(path)
    reference = arch_of(arch)
    problem = fit_problems(reference.build().state_dict(), state, reference.heads)
    if problem:
        raise WeightsUnavailable(f"{path} does not fit {arch} ({problem})")
    return state


def local_file(arch: str, value: str | None, download: bool = False) -> Path | None:
    """The file ``value`` names for ``arch`` on this machine (the library's cache or the
    path itself), None for ``none``; raises :class:`WeightsUnavailable`."""
    source = source_of(arch, value)
    if source is None:
        return None
    if isinstance(source, Path):
        if not source.is_file():
            raise WeightsUnavailable(f"{source}: no such file")
        return source
    return fetch(source, download)


def describe(arch: str, value: str | None) -> str:
    """``value`` in words for plans and reports, e.g. ``imagenet (torchvision:ResNet50_Weights.IMAGENET1K_V1)``."""
    try:
        source = source_of(arch, value)
    except WeightsUnavailable:
        return str(value)
    if source is None:
        return NONE
    return (
        f"{value} ({source})" if isinstance(source, Source) and str(source) != value else str(value)
    )


@dataclass(frozen=True)
class Need:
    """One config field that starts a model from pretrained weights: ``key`` is
    ``<stage>.<field>`` and ``arch`` the architecture the file must fit."""

    key: str
    arch: str

    @property
    def stage(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def field_name(self) -> str:
        return self.key.split(".", 1)[1]


def load_into(module: nn.Module, state: dict[str, torch.Tensor], heads: tuple[str, ...] = CLASSIFIER_PREFIXES,
              origin: str = "weights") -> None:  # fmt: skip
    """Load ``state`` into ``module``: every key of ``module`` but its ``heads`` (left as
    they are: a new task head) must be there with its shape. Raises ``ValueError`` naming
    ``origin`` and a few offending keys."""
    problem = fit_problems(module.state_dict(), state, heads)
    if problem:
        raise ValueError(f"{origin} does not match {type(module).__name__} ({problem})")
    kept = {k: v for k, v in state.items() if not k.startswith(heads)}
    module.load_state_dict({**module.state_dict(), **kept})
