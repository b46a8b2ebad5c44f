"""Method ``flare_unet``: a small MONAI U-Net on 2-D FLARE22 slices whose loss weighs a
Dice term against a cross-entropy term. A method of one's own, outside raysuite: this
package registers it under the entry-point group ``raysuite.methods``.

One training stage, ``train``:

- data: the labelled FLARE22 cases, preprocessed as raysuite's FLARE22 reader does
  (RAS, 1 x 1 x 2.5 mm, [-500, 500] HU -> [0, 1], slices at least 96 px), split per case
  (``labelled_cases`` train, ``val_cases`` validate, ``split_seed``);
- model: ``monai.networks.nets.UNet`` (2-D, 1 channel in, 14 classes out: background and
  13 organs), ``channels`` per level, stride 2 between levels;
- loss (:class:`WeightedDiceCE`): ``dice_weight * Dice + ce_weight * CE``, MONAI's
  ``DiceCELoss`` with ``lambda_dice = dice_weight`` and ``lambda_ce = ce_weight``;
- optimiser: AdamW, linear warm-up then cosine decay, per optimiser step;
- evaluation: whole validation slices, ``val/dice`` the mean Dice over every (slice, organ)
  whose organ is in the slice's ground truth (background left out).

Its baseline arm is cross-entropy alone (``train.dice_weight: 0``). The whole method fits
in this one module; a larger one may split into modules of this package: raysuite's stage
cache fingerprints every module of the package the method imports, and raysuite's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from raysuite.data.cache import SliceCache, default_cache_dir
from raysuite.data.datasets import ensure_manifest, prepare
from raysuite.data.formats import flare22
from raysuite.data.rng import ProcessRng
from raysuite.methods.base import Method, OptimConfig, StageDef, StageInputs
from raysuite.methods.nn.seg_metrics import dice_per_slice
from raysuite.train.loop import Evaluation, Recipe
from raysuite.train.optim import decay_groups, warmup_cosine

PREP = flare22.Preprocessing()
EVAL_CHUNK = 16  # validation slices per forward pass


class TrainConfig(OptimConfig):
    """The ``train`` stage. From :class:`~raysuite.methods.base.OptimConfig` (what every
    training stage has; redeclared below with this method's defaults): ``epochs``,
    ``batch_size``, ``lr``, ``num_workers``, ``amp``; and ``seed``, which seeds
    initialisation, crops and batch order."""

    # model
    channels: tuple[int, ...] = Field(
        (32, 64, 128, 256), min_length=2, description="U-Net feature channels per level, coarsest last"
    )
    num_res_units: int = Field(2, ge=0, description="residual units per U-Net block (0: plain convolutions)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside the U-Net blocks")
    # loss
    dice_weight: float = Field(1.0, ge=0, description="w_dice in loss = w_dice * Dice + w_ce * CE")
    ce_weight: float = Field(1.0, ge=0, description="w_ce in loss = w_dice * Dice + w_ce * CE")
    # data
    labelled_cases: int = Field(40, ge=1, description="labelled FLARE22 cases to train on")
    val_cases: int = Field(10, ge=1, description="labelled cases held out for val/dice")
    split_seed: int = Field(0, description="seed of the shuffle assigning cases to val and train")
    crop_size: int = Field(128, ge=16, description="side in px of the square training crops")
    pos_fraction: float = Field(0.5, ge=0, le=1, description="share of crops centred on an organ pixel")
    max_slices_per_epoch: int | None = Field(
        None, ge=1, description="slices drawn per epoch (all workers); null: every training slice"
    )
    num_workers: int = Field(4, ge=0, description="DataLoader processes per training worker")
    # optimisation
    epochs: int = Field(100, ge=1, description="training epochs")
    batch_size: int = Field(16, ge=1, description="crops per optimiser step, over every DDP worker")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    final_lr: float = Field(1e-5, ge=0, description="learning rate at the end of the cosine decay")
    warmup_epochs: int = Field(5, ge=0, description="epochs of linear warm-up from 0 to lr")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay (not on biases and norms)")
    amp: bool = Field(True, description="float16 mixed precision on CUDA")
    # evaluation
    eval_every: int = Field(5, ge=1, description="epochs between evaluations (the last is always evaluated)")
    patience: int | None = Field(
        None, ge=1, description="stop after this many epochs without a better val/dice; null: never"
    )

    @model_validator(mode="after")
    def _runnable(self) -> TrainConfig:
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise ValueError("dice_weight and ce_weight are both 0: the loss would be 0")
        if self.crop_size % self.downsampling:
            raise ValueError(
                f"crop_size {self.crop_size} must be a multiple of {self.downsampling} "
                f"(the U-Net halves it {len(self.channels) - 1} times)"
            )
        return self

    @property
    def downsampling(self) -> int:
        """The U-Net's total stride, 2 ** (levels - 1): inputs must be multiples of it."""
        return 2 ** (len(self.channels) - 1)


# ------------------------------------------------------------------------------ loss


class WeightedDiceCE(nn.Module):
    """``dice_weight * Dice + ce_weight * CE`` (MONAI ``DiceCELoss`` with ``lambda_dice`` and
    ``lambda_ce``), returned with its two terms.

    ``logits`` (B, C, H, W), ``target`` (B, 1, H, W) integer labels in 0..C-1. With
    ``p = softmax(logits)`` and ``g`` the one-hot target, per sample b and class c
    ``Dice_bc = 1 - (2 sum_hw p g + 1e-5) / (sum_hw p + sum_hw g + 1e-5)`` (background
    included), ``Dice`` the mean over (b, c); ``CE`` the mean over pixels of
    ``-log p[target]``. Returns ``(loss, dice, ce)``, each a scalar tensor.
    """

    def __init__(self, dice_weight: float, ce_weight: float):
        super().__init__()
        from monai.losses.dice import DiceCELoss

        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.terms = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_ce=ce_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = logits.float()  # the softmax and log in float32 under AMP
        dice = self.terms.dice(logits, target)
        ce = self.terms.ce(logits, target)
        return self.dice_weight * dice + self.ce_weight * ce, dice, ce


# ------------------------------------------------------------------------------ data


def prepare_data(data: dict[str, Any]) -> None:
    """Synthesise a FLARE22 layout when the root is absent (``synthetic_if_missing``),
    then ingest its manifest once (every node may call this: it is locked)."""
    prepare(data, lambda root: any(root.rglob("*_0000.nii.gz")), default_cases=20)


def _split(data: dict[str, Any], cfg: TrainConfig) -> pd.DataFrame:
    """The case table (``flare22.cases_from_manifest``) with this config's split column."""
    df, _ = ensure_manifest(data)
    cases = flare22.cases_from_manifest(df, data["root"])
    return flare22.split_cases(cases, cfg.labelled_cases, cfg.val_cases, cfg.split_seed)


def manifest_hash(data: dict[str, Any], stage: str, cfg: TrainConfig) -> str:
    """What the stage reads of the data, for its content key: the manifest's hash, this
    config's split of the cases and the preprocessing."""
    _, meta = ensure_manifest(data)
    cases = _split(data, cfg)
    blob = meta["hash"] + cases[["case_id", "split"]].to_csv(index=False) + PREP.key()
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cases_of(cases: pd.DataFrame, split: str) -> list[tuple[str, str]]:
    """(image path, label path) of the cases of ``split`` (``train``, ``val``)."""
    chosen = cases["split"] == split
    return list(zip(cases.loc[chosen, "image"], cases.loc[chosen, "label"], strict=True))


def _load(data: dict[str, Any], paths: list[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Preprocessed (Z, H, W) float16 slices and uint8 labels of labelled cases (``paths``:
    image and label files), memory-mapped from raysuite's slice cache (built on first use)."""
    cache = SliceCache(data.get("cache_dir") or default_cache_dir(), "flare22", PREP.key())
    out = []
    for image_path, label_path in paths:
        image, label = cache.get(image_path, label_path, lambda i, lab: flare22.preprocess(i, lab, PREP))
        assert label is not None, label_path
        out.append((image, label))
    return out


class CropDataset(Dataset):
    """Every slice of the training cases -> one ``crop_size`` crop, centred on an organ
    pixel with probability ``pos_fraction`` (else on a background pixel), slices smaller
    than the crop zero-padded. Item: ``(image (1, S, S) float32, label (1, S, S) int64)``."""

    def __init__(self, cases: list[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig):
        self.cases, self.cfg, self.rng = cases, cfg, ProcessRng()
        self.index = [(c, z) for c, (image, _) in enumerate(cases) for z in range(image.shape[0])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, z = self.index[i]
        image, label = self.cases[c]
        x, y = np.asarray(image[z], np.float32), np.asarray(label[z], np.int64)
        s, rng = self.cfg.crop_size, self.rng.numpy()
        pad = ((0, max(0, s - x.shape[0])), (0, max(0, s - x.shape[1])))
        x, y = np.pad(x, pad), np.pad(y, pad)
        h, w = x.shape
        pool = np.argwhere(y > 0) if rng.random() < self.cfg.pos_fraction else np.argwhere(y == 0)
        cy, cx = pool[rng.integers(len(pool))] if len(pool) else (h // 2, w // 2)
        top, left = int(np.clip(cy - s // 2, 0, h - s)), int(np.clip(cx - s // 2, 0, w - s))
        x, y = x[top : top + s, left : left + s], y[top : top + s, left : left + s]
        return torch.from_numpy(x.copy())[None], torch.from_numpy(y.copy())[None]


# --------------------------------------------------------------------------- model


def unet(cfg: TrainConfig) -> nn.Module:
    """MONAI's 2-D U-Net: (B, 1, H, W) -> (B, 14, H, W) logits, H and W multiples of
    ``cfg.downsampling``."""
    from monai.networks.nets.unet import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=flare22.NUM_CLASSES,
        channels=cfg.channels,
        strides=(2,) * (len(cfg.channels) - 1),
        num_res_units=cfg.num_res_units,
        dropout=cfg.dropout,
    )


# ------------------------------------------------------------------------ evaluation


def predict_case(net: nn.Module, image: np.ndarray, label: np.ndarray, multiple: int, device: torch.device,
                 amp: bool = False) -> torch.Tensor:  # fmt: skip
    """One validation case's (Z, 14) float64 Dice per slice and class
    (:func:`~raysuite.methods.nn.seg_metrics.dice_per_slice`: NaN where a class is absent
    from the slice's label). ``image`` (Z, H, W), zero-padded to multiples of ``multiple``
    for the forward pass; the prediction is cropped back to (H, W)."""
    h, w = image.shape[1:]
    pad = (0, -w % multiple, 0, -h % multiple)  # F.pad order: last dim first
    out = []
    for z0 in range(0, image.shape[0], EVAL_CHUNK):
        x = torch.from_numpy(np.asarray(image[z0 : z0 + EVAL_CHUNK], np.float32))[:, None].to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = net(F.pad(x, pad))[:, :, :h, :w]
        truth = torch.from_numpy(np.asarray(label[z0 : z0 + EVAL_CHUNK], np.int64))
        out.append(dice_per_slice(logits.argmax(1).cpu(), truth, flare22.NUM_CLASSES))
    return torch.cat(out)


def score(records: list[torch.Tensor]) -> dict[str, float]:
    """``val/dice``: the mean Dice over every (slice, organ) pair of the validation cases
    whose organ is in that slice's ground truth (``records``: per case (Z, 14) from
    :func:`predict_case`; column 0, background, left out)."""
    organs = torch.cat(records)[:, 1:]
    present = ~torch.isnan(organs)
    return {"val/dice": float(organs[present].mean()) if present.any() else float("nan")}


# ----------------------------------------------------------------------------- recipe


def train_recipe(inp: StageInputs[TrainConfig]) -> Recipe:
    """The ``train`` stage for raysuite's epoch loop (``raysuite.train.loop.fit``)."""
    cfg = inp.cfg
    cases = _split(inp.data, cfg)
    train = _load(inp.data, _cases_of(cases, "train"))
    val = _load(inp.data, _cases_of(cases, "val"))
    dataset = CropDataset(train, cfg)
    sampler = None  # the cap counts slices of all workers; the runtime shards the sampler per rank
    if cfg.max_slices_per_epoch:
        sampler = RandomSampler(dataset, num_samples=min(len(dataset), cfg.max_slices_per_epoch))
    loader = DataLoader(
        dataset, batch_size=inp.local_batch(cfg.batch_size), shuffle=sampler is None, sampler=sampler,
        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
    )  # fmt: skip
    loss_fn = WeightedDiceCE(cfg.dice_weight, cfg.ce_weight)

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(decay_groups([module], cfg.weight_decay), lr=cfg.lr)

    def lr_at(step: int, total: int) -> float:
        warmup = cfg.warmup_epochs * max(1, total // cfg.epochs)  # epochs -> optimiser steps
        return warmup_cosine(step, total, warmup, cfg.lr, cfg.final_lr)

    def step(net: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        x, y = batch
        loss, dice, ce = loss_fn(net(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
        return {"loss": loss, "dice_term": dice.detach(), "ce_term": ce.detach()}

    def epoch_end(outputs: list[dict[str, Any]]) -> dict[str, float]:
        """Each term's epoch mean, as ``train/dice_term`` and ``train/ce_term``."""
        return {key: float(np.mean([o[key] for o in outputs])) for key in ("dice_term", "ce_term")}

    @torch.no_grad()
    def predict(net: nn.Module, device: torch.device, shard: Any) -> list[torch.Tensor]:
        was_training = net.training
        net.eval()
        records = []
        for c in shard:
            image, label = val[c]
            records.append(predict_case(net, image, label, cfg.downsampling, device, cfg.amp))
        net.train(was_training)
        return records

    return Recipe(
        stage="train", model=unet(cfg), train_loader=loader, make_optimizer=make_optimizer, lr_at=lr_at,
        step=step, epochs=cfg.epochs, epoch_end=epoch_end, evaluate=Evaluation(range(len(val)), predict, score),
        eval_epochs=lambda epoch: epoch % cfg.eval_every == 0, monitor="val/dice", mode="max",
        patience=cfg.patience, amp=cfg.amp,
    )  # fmt: skip


# ----------------------------------------------------------------------------- method

METHOD = Method(
    name="flare_unet",
    seed="",  # no seed paper: a method of one's own (raysuite's own methods name theirs)
    description="2-D MONAI U-Net on FLARE22 organs; loss = dice_weight * Dice + ce_weight * CE",
    data_format="flare22",
    stages={"train": StageDef("train", TrainConfig, train_recipe)},
    monitor="val/dice",
    metrics={"train": ("train/dice_term", "train/ce_term", "val/dice", "val/dice_best")},
    baseline={"train.dice_weight": 0.0},  # cross-entropy alone
    tiny={"train": {"channels": [8, 16, 32], "num_res_units": 1, "crop_size": 64, "batch_size": 8, "num_workers": 0}},
    smoke={
        "train": {"epochs": 2, "labelled_cases": 3, "val_cases": 2, "warmup_epochs": 0, "eval_every": 1,
                  "max_slices_per_epoch": 64, "patience": None},
    },  # fmt: skip
    smoke_cases=5,
    prepare_data=prepare_data,
    manifest_hash=manifest_hash,
)
