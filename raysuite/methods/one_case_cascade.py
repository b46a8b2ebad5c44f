"""one_case_cascade (seed 004): a classifier gates a U-Net trained on positive images only
("One Case"), with thresholds and TTA chosen after training, on SIIM-ACR pneumothorax.

Stages (a DAG: the two models are independent and cached independently):

- ``classifier`` (Table 4.3): timm ResNeXt-50 32x4d from ImageNet (``weights``), one logit,
  Park's soft-F1 loss over both classes (§3.6.1), RAdam with decoupled weight decay, 224 px,
  all labelled images, Table 4.1 augmentations, one fastai ``fit_one_cycle`` of 127 epochs;
  Cutout from epoch 70 (§4.4.1). ``enabled: false`` skips it (the baseline arm has none).
- ``segmenter`` (Tables 4.2, 4.4): U-Net on a ResNet-34 encoder from ImageNet, two-class
  softmax, Jaccard loss (optionally weighted with the §3.6.1 losses), Adam with decoupled
  weight decay (fastai's ``true_wd``), 256 px, 6 epochs with the encoder frozen then 12
  unfrozen: two one-cycle schedules, as fastai's two ``fit_one_cycle`` calls;
  ``positives_only`` (the One Case model) or all images (the baseline U-Net).
- ``predict`` (job, one worker): both models on the validation fold and the test split,
  each image also flipped (TTA), probabilities saved once (uint8, compressed).
- ``posthoc`` (job, in the trial driver): Table 5.1's rows on the saved validation
  predictions (§5.2: ArgMax; Raw, the pixel threshold searched; TTA, the same on the
  flip-averaged prediction), and the configured search (grid or Optuna; by default the
  thesis' own) as an extra row, the chosen values evaluated once on the test split; every
  combination is a table artifact. It lives in :mod:`raysuite.methods.one_case_cascade_posthoc`
  and searches its knobs (``Method.posthoc_knobs``) through :mod:`raysuite.methods.knobs`.

Data (§4.2): labelled SIIM-ACR images; the manifest's patient-level test split is held out
and the rest is cut into K = 5 folds by patient (``search.repeats.fold``: each fold one
repeat, §5.3 reports fold means ± std); fold k validates, the others train. Images are the
DICOM grey levels / 255, resized, repeated to 3 channels and normalised with ImageNet
statistics (§4.1.1).

Metrics (§5.1, Table 5.1): ``val/dice_per_image`` (the competition's Dice per image: 1 when
prediction and truth are both empty), ``val/dice`` and ``val/iou`` over all pixels, the
classifier's AUC, F1, precision and recall; each for the ArgMax, Raw, TTA and Searched rows
as ``val/<row>/<metric>``.

Every departure from the thesis is in :data:`DEPARTURES` (``raysuite plan`` and the
report list them); :func:`seed_design` holds the thesis' values of the config keys.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from raysuite.data import manifest
from raysuite.data.cache import ShardCache
from raysuite.data.cxr_augment import AugmentConfig, augment, cutout
from raysuite.data.datasets import ensure_manifest, manifest_path, prepare
from raysuite.data.formats import siim_acr
from raysuite.methods.base import (
    Method,
    OptimConfig,
    StageConfig,
    StageConfigs,
    StageDef,
    StageInputs,
)
from raysuite.methods.ledger import Departure, Paper
from raysuite.methods.nn import posthoc
from raysuite.methods.nn.cls_metrics import precision_recall_f1, roc_auc
from raysuite.methods.nn.pretrained import Need
from raysuite.methods.nn.seg_losses import soft_f1_loss, weighted_seg_loss
from raysuite.methods.nn.unet import TimmUNet, load_encoder_weights
from raysuite.methods.nn.weights import load_imagenet_weights
from raysuite.methods.one_case_cascade_posthoc import (
    POSTHOC_KNOBS,
    ROWS,
    SCORES,
    SEARCHED,
    PosthocConfig,
    posthoc_job,
    report,
)
from raysuite.train.loop import Recipe, load_state, loader_evaluation
from raysuite.train.optim import OneCycle, cycle_of, set_momentum

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet (fastai imagenet_stats)
FOLDS = 5  # §5.3: 5-fold cross-validation
SEG_LOSSES = ("jaccard", "dice", "bce", "focal", "tversky", "combo")


def _timm_name(name: str) -> str:
    import timm

    if not timm.list_models(name):
        raise ValueError(f"{name!r} is not a timm model name")
    return name


class CascadeStageConfig(OptimConfig):
    """Fields both models share. ``weights``: where the model (the classifier) or its encoder
    (the U-Net) starts: ``imagenet`` (§4.5: fastai's and [59]'s pre-trained models, i.e.
    torchvision's ImageNet weights, :mod:`~raysuite.methods.nn.pretrained`), ``none``
    (random, TINY runs) or a local state-dict file. Training is fastai v1's one-cycle policy
    (§3.6.3: learning rate and momentum ``moms``), with decoupled weight decay (fastai's
    ``true_wd``, its default ``wd`` 1e-2 on every parameter)."""

    num_workers: int = Field(4, ge=0)
    amp: bool = True
    augment: bool = True  # Table 4.1 (flip, symmetric warp, rotate, zoom, brightness, contrast)
    weights: str = "imagenet"  # none | imagenet | a local file (pretrained.py)
    moms: tuple[float, float] = (0.95, 0.85)  # fastai's one-cycle momentum (beta1): high, low
    weight_decay: float = Field(1e-2, ge=0)  # fastai's default wd, decoupled (true_wd)
    eval_every: int = Field(1, ge=1)
    patience: int | None = Field(None, ge=1)
    max_train_images: int | None = Field(None, ge=1)  # smoke runs


class ClassifierConfig(CascadeStageConfig):
    """Table 4.3: ResNeXt-50 (cardinality 32) from ImageNet, RAdam, F1 loss, 224 px, 127
    epochs, trained as one ``fit_one_cycle``. The seed gives no batch size or learning rate:
    32 and a one-cycle peak of 1e-3 are our choices."""

    enabled: bool = True  # false: no classifier (the baseline arm)
    arch: str = "resnext50_32x4d"  # any timm model name
    image_size: int = Field(224, ge=32)
    epochs: int = Field(127, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    beta2: float = Field(0.999, ge=0, lt=1)  # RAdam's default (the seed's RAdam code is not named)
    loss: Literal["soft_f1", "bce"] = "soft_f1"
    cutout_from_epoch: int | None = Field(70, ge=1)  # §4.4.1: "after around 70 epochs"; null: never
    cutout_holes: tuple[int, int] = (1, 4)
    cutout_length: tuple[float, float] = (0.04, 0.18)  # hole side, fraction of the image side

    @field_validator("arch")
    @classmethod
    def _arch(cls, name: str) -> str:
        return _timm_name(name)


class SegmenterConfig(CascadeStageConfig):
    """Tables 4.2 and 4.4: U-Net, ResNet-34 encoder from ImageNet, Adam, Jaccard loss, 256 px,
    18 epochs: 6 with the encoder frozen + 12 unfrozen, fastai's two ``fit_one_cycle``
    calls (the One Case U-Net uses "the same ... number of epochs", §4.4.2). Batch 12 is the
    seed's Kaggle submission setting ("baseline 12 bs"). Loss = sum of the weighted §3.6.1
    terms. Adam's betas are fastai v1's ``(0.9, 0.99)``, beta1 cycled by ``moms``."""

    positives_only: bool = True  # the "One Case" U-Net; false: the baseline trained on all
    encoder: str = "resnet34"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    image_size: int = Field(256, ge=32)
    epochs: int = Field(18, ge=1)
    frozen_epochs: int = Field(6, ge=0)  # first cycle with the encoder frozen; only with weights
    train_bn: bool = True  # fastai v1's train_bn: the frozen encoder's BatchNorm still trains
    batch_size: int = Field(12, ge=2)
    lr: float = Field(1e-3, gt=0)
    beta2: float = Field(0.99, ge=0, lt=1)  # fastai v1's Adam betas (0.9, 0.99)
    jaccard_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(0.0, ge=0)
    bce_weight: float = Field(0.0, ge=0)
    focal_weight: float = Field(0.0, ge=0)
    tversky_weight: float = Field(0.0, ge=0)
    combo_weight: float = Field(0.0, ge=0)
    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    tversky_alpha: float = Field(0.3, ge=0)  # weight of false positives
    tversky_beta: float = Field(0.7, ge=0)  # weight of false negatives
    tversky_gamma: float = Field(1.0, gt=0)  # > 1: focal Tversky
    combo_ce_ratio: float = Field(0.5, ge=0, le=1)
    combo_beta: float = Field(0.5, ge=0, le=1)

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, name: str) -> str:
        return _timm_name(name)

    @model_validator(mode="after")
    def _some_loss(self) -> SegmenterConfig:
        if not any(getattr(self, f"{name}_weight") > 0 for name in SEG_LOSSES):
            raise ValueError("at least one of the *_weight losses must be positive")
        return self

    def loss_weights(self) -> dict[str, float]:
        return {name: getattr(self, f"{name}_weight") for name in SEG_LOSSES}

    def loss_params(self) -> dict[str, dict[str, float]]:
        return {
            "focal": {"alpha": self.focal_alpha, "gamma": self.focal_gamma},
            "tversky": {"alpha": self.tversky_alpha, "beta": self.tversky_beta, "gamma": self.tversky_gamma},
            "combo": {"ce_ratio": self.combo_ce_ratio, "ce_beta": self.combo_beta},
        }


class PredictConfig(StageConfig):
    """Inference of both models on the validation fold and the test split, each image
    also horizontally flipped (TTA); nothing here changes the saved predictions' meaning."""

    batch_size: int = Field(16, ge=1)
    amp: bool = True


# ------------------------------------------------------------------------------ data


def prepare_data(data: dict[str, Any]) -> None:
    """Synthesise a SIIM-ACR layout when the root is absent (and allowed), then ingest."""
    prepare(data, lambda root: (root / siim_acr.TRAIN_DIR).is_dir(), default_cases=60)


def folds(data: dict[str, Any]) -> int:
    return int((data.get("split") or {}).get("folds") or FOLDS)


def splits(data: dict[str, Any], fold: int | None) -> pd.DataFrame:
    """Labelled images with a ``role``: ``test`` (the manifest's patient-level test split),
    ``val`` (fold ``fold`` of the rest, K folds by patient) or ``train``; column
    ``positive`` (the image has a pneumothorax mask)."""
    df, _ = ensure_manifest(data)
    labelled = df.extra.map(lambda e: bool(json.loads(e or "{}").get("labelled", True)))
    df = df.loc[labelled].reset_index(drop=True)
    test = df.split == "test"
    rest = manifest.assign_folds(df.loc[~test], folds(data), (data.get("split") or {}).get("seed", 0))
    role = pd.Series("test", index=df.index, dtype=object)
    role[~test] = np.where(rest.fold.to_numpy() == (fold or 0), "val", "train")
    positive = df["mask"].map(lambda m: isinstance(m, str) and m.startswith("rle:"))
    return df.assign(role=role, positive=positive.astype(bool))


def manifest_hash(data: dict[str, Any], stage: str, cfg: Any) -> str:
    """The manifest's content hash, the fold count and (training stages) the preprocessing.
    The fold itself is part of every stage key (``plan``)."""
    _, meta = ensure_manifest(data)
    prep = _prep(cfg.image_size).key() if hasattr(cfg, "image_size") else ""
    blob = f"{meta['hash']}|{folds(data)}|{(data.get('split') or {}).get('seed', 0)}|{prep}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _prep(size: int) -> siim_acr.Preprocessing:
    return siim_acr.Preprocessing(size=size)


def _caches(data: dict[str, Any], size: int) -> tuple[ShardCache, ShardCache]:
    """(images, masks) of every manifest row at ``size`` x ``size``, memory-mapped shards:
    float16 images in [0, 1] and uint8 0/1 masks (nearest), built once per preprocessing."""
    df, meta = ensure_manifest(data)
    rows = {r["sample_id"]: r for r in df.to_dict("records")}
    prep = _prep(size)
    ids = list(rows)
    path = manifest_path(data)
    images = ShardCache(path, meta["hash"], prep.key(), ids, _ImageLoader(Path(data["root"]), rows, prep), shard_size=64)
    masks = ShardCache(path, meta["hash"], prep.key() + "-mask", ids, _MaskLoader(rows, prep), shard_size=256, dtype=np.uint8)
    return images, masks


class _ImageLoader:
    """Picklable ``sample_id -> (S, S) image`` for the shard cache."""

    def __init__(self, root: Path, rows: dict[str, dict[str, Any]], prep: siim_acr.Preprocessing):
        self.root, self.rows, self.prep = root, rows, prep

    def __call__(self, sample_id: str) -> np.ndarray:
        return siim_acr.preprocess(self.root, self.rows[sample_id], self.prep)


class _MaskLoader:
    def __init__(self, rows: dict[str, dict[str, Any]], prep: siim_acr.Preprocessing):
        self.rows, self.prep = rows, prep

    def __call__(self, sample_id: str) -> np.ndarray:
        return siim_acr.target_mask(self.rows[sample_id], self.prep)


class Radiographs(Dataset):
    """Rows -> ((1, S, S) float image in [0, 1], (S, S) uint8 mask, label 0/1)."""

    def __init__(self, caches: tuple[ShardCache, ShardCache], rows: pd.DataFrame):
        self.images, self.masks = caches
        self.ids = rows.sample_id.tolist()
        self.labels = rows.positive.astype(np.float32).tolist()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sid = self.ids[i]
        image = torch.from_numpy(self.images[sid])[None]
        mask = torch.from_numpy(self.masks[sid].astype(np.uint8))
        return image, mask, torch.tensor(self.labels[i])


def to_input(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) in [0, 1] -> (B, 3, S, S) ImageNet-normalised (§4.1.1)."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.expand(-1, 3, -1, -1) - mean) / std


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
        persistent_workers=shuffle and num_workers > 0,
    )  # fmt: skip


def _train_rows(df: pd.DataFrame, cfg: CascadeStageConfig, positives_only: bool = False) -> pd.DataFrame:
    rows = df.loc[(df.role == "train") & (df.positive | (not positives_only))]
    return rows.head(cfg.max_train_images) if cfg.max_train_images else rows


# ---------------------------------------------------------------------------- models


def classifier_model(cfg: ClassifierConfig, weights: Path | None = None) -> nn.Module:
    """timm ``arch`` with one output logit: (B, 3, S, S) -> (B, 1); the body from the
    state dict ``weights`` (ImageNet: torchvision's keys, which timm's ResNets share), its
    head new. sigmoid(logit) is the abnormal class's probability of a two-class softmax
    over (0, logit)."""
    import timm

    model = timm.create_model(cfg.arch, pretrained=False, num_classes=1)
    if weights is not None:
        load_imagenet_weights(model, weights)
    return model


def segmenter_model(cfg: SegmenterConfig, weights: Path | None = None) -> TimmUNet:
    """U-Net, two-class logits: (B, 3, S, S) -> (B, 2, S, S); the encoder from the
    classification state dict ``weights`` (its head dropped)."""
    model = TimmUNet(cfg.encoder, num_classes=2, decoder_channels=tuple(cfg.decoder_channels))
    if weights is not None:
        load_encoder_weights(model, weights)
    return model


def load_trained(model: nn.Module, checkpoint_dir: Path) -> nn.Module:
    """The stage's best weights (by its monitored metric), else its last."""
    state = load_state(checkpoint_dir)
    model.load_state_dict(state.get("best_model") or state["model"])
    return model.eval()


# ---------------------------------------------------------------------------- recipes


def one_cycles(cfg: CascadeStageConfig, cycles: tuple[int, ...], optimizers: list[torch.optim.Optimizer]) -> Callable[[int, int], float]:
    """The recipe's ``lr_at``: fastai v1's ``fit_one_cycle`` (§3.6.3, :class:`~raysuite.
    train.optim.OneCycle`, peak ``cfg.lr``) restarted for each of ``cycles`` (epochs of
    each successive ``fit_one_cycle`` call). Each step also sets the cycle's momentum (Adam's
    beta1, ``cfg.moms``) on the newest of ``optimizers``, as fastai's scheduler does."""
    schedule = OneCycle(cfg.lr, moms=cfg.moms)

    def lr_at(step: int, total: int) -> float:
        _, within, length = cycle_of(step, total, cycles)
        if optimizers:
            set_momentum(optimizers[-1], schedule.momentum(within, length))
        return schedule.lr(within, length)

    return lr_at


def _augmenter(cfg: CascadeStageConfig, seed: int) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Batched Table 4.1 augmentation of (images, masks) on their device, seeded per rank."""
    config = AugmentConfig() if cfg.augment else AugmentConfig.none()
    generator = torch.Generator().manual_seed(seed)

    return lambda images, masks: augment(images, masks, config, generator)


def _probabilities(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Classifier sigmoid probabilities and labels over ``loader``: (N,), (N,)."""
    probs, labels = [], []
    model.eval()
    with torch.no_grad():
        for images, _, y in loader:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                logits = model(to_input(images.to(device)))
            probs.append(torch.sigmoid(logits.float()).squeeze(1).cpu())
            labels.append(y)
    model.train()
    return torch.cat(probs).numpy(), torch.cat(labels).numpy().astype(bool)


def classifier_recipe(inp: StageInputs) -> Recipe:
    cfg: ClassifierConfig = inp.cfg
    df = splits(inp.data, inp.fold)
    caches = _caches(inp.data, cfg.image_size)
    train = _train_rows(df, cfg)
    model = classifier_model(cfg, inp.weights_file("weights", cfg.arch))
    loader = _loader(Radiographs(caches, train), inp.local_batch(cfg.batch_size), True, cfg.num_workers,
                     drop_last=len(train) > cfg.batch_size)  # fmt: skip
    val_loader = _loader(Radiographs(caches, df.loc[df.role == "val"]), 2 * cfg.batch_size, False, 0)
    aug = _augmenter(cfg, inp.seed * 1000 + inp.rank)
    cut = {"on": False}
    cut_generator = torch.Generator().manual_seed(inp.seed * 1000 + inp.rank + 1)

    def epoch_start(epoch: int) -> None:
        cut["on"] = cfg.cutout_from_epoch is not None and epoch >= cfg.cutout_from_epoch

    def step(net: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        images, masks, labels = (t.to(device, non_blocking=True) for t in batch)
        images, _ = aug(images, masks)
        if cut["on"]:
            images = cutout(images, cfg.cutout_holes, cfg.cutout_length, cut_generator)
        logits = net(to_input(images)).squeeze(1)
        target = labels.float()
        loss = soft_f1_loss(logits, target) if cfg.loss == "soft_f1" else F.binary_cross_entropy_with_logits(logits, target)
        return {"loss": loss}

    def predict(net: nn.Module, device: torch.device, shard: DataLoader) -> list[tuple[float, bool]]:
        """Per validation image: (sigmoid probability, label)."""
        probs, labels = _probabilities(net, shard, device, cfg.amp)
        return [(float(p), bool(y)) for p, y in zip(probs, labels, strict=True)]

    def score(records: list[tuple[float, bool]]) -> dict[str, float]:
        probs = np.array([p for p, _ in records], np.float32)
        labels = np.array([y for _, y in records], bool)
        scores = precision_recall_f1(probs >= 0.5, labels)
        return {"classifier/val_auc": roc_auc(probs, labels), **{f"classifier/val_{k}": v for k, v in scores.items()}}

    evaluate = loader_evaluation(val_loader, predict, score)
    optimizers: list[torch.optim.Optimizer] = []

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        """RAdam (Table 4.3) with fastai's decoupled weight decay (``true_wd``) on every
        parameter (fastai's ``bn_wd``)."""
        optimizer = torch.optim.RAdam(module.parameters(), lr=cfg.lr, betas=(cfg.moms[0], cfg.beta2),
                                      weight_decay=cfg.weight_decay, decoupled_weight_decay=True)  # fmt: skip
        optimizers.append(optimizer)
        return optimizer

    return Recipe(
        stage="classifier", model=model, train_loader=loader, make_optimizer=make_optimizer,
        lr_at=one_cycles(cfg, (cfg.epochs,), optimizers), step=step, epochs=cfg.epochs, evaluate=evaluate,
        eval_epochs=lambda e: e % cfg.eval_every == 0, monitor="classifier/val_auc", mode="max",
        patience=cfg.patience, amp=cfg.amp, epoch_start=epoch_start,
    )  # fmt: skip


def _fg_probability(net: nn.Module, images: torch.Tensor, amp: bool) -> torch.Tensor:
    """(B, 1, S, S) images -> (B, S, S) softmax probability of pneumothorax."""
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp and images.device.type == "cuda"):
        logits = net(to_input(images))
    return torch.softmax(logits.float(), 1)[:, 1]


def segmenter_recipe(inp: StageInputs) -> Recipe:
    cfg: SegmenterConfig = inp.cfg
    df = splits(inp.data, inp.fold)
    caches = _caches(inp.data, cfg.image_size)
    train = _train_rows(df, cfg, cfg.positives_only)
    if train.empty:
        raise ValueError(f"segmenter: no training images in fold {inp.fold} (positives_only={cfg.positives_only})")
    val = df.loc[(df.role == "val") & (df.positive | (not cfg.positives_only))]
    loader = _loader(Radiographs(caches, train), inp.local_batch(cfg.batch_size), True, cfg.num_workers,
                     drop_last=len(train) > cfg.batch_size)  # fmt: skip
    val_loader = _loader(Radiographs(caches, val), cfg.batch_size, False, 0)
    aug = _augmenter(cfg, inp.seed * 1000 + inp.rank)
    weights_file = inp.weights_file("weights", cfg.encoder)
    model = segmenter_model(cfg, weights_file)
    # Table 4.2: fit_one_cycle(frozen_epochs) on the frozen encoder, then unfreeze and
    # fit_one_cycle(the rest); a random encoder (weights none) is never frozen
    frozen_epochs = min(cfg.frozen_epochs, cfg.epochs) if weights_file is not None else 0
    cycles = tuple(n for n in (frozen_epochs, cfg.epochs - frozen_epochs) if n > 0)
    weights, params = cfg.loss_weights(), cfg.loss_params()
    optimizers: list[torch.optim.Optimizer] = []

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        """Adam with fastai's decoupled weight decay (``true_wd``, every parameter). Group 0
        is what freezing fixes: the encoder's weights, and its BatchNorm too unless
        ``train_bn`` (fastai v1 keeps a frozen body's BatchNorm training)."""
        assert isinstance(module, TimmUNet)  # the loop hands back the recipe's model
        fixed = [p for m in module.encoder.modules() if not cfg.train_bn or not isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)]  # fmt: skip
        ids = {id(p) for p in fixed}
        rest = [p for p in module.parameters() if id(p) not in ids]
        optimizer = torch.optim.AdamW(
            [{"params": fixed, "encoder": True}, {"params": rest}], lr=cfg.lr, betas=(cfg.moms[0], cfg.beta2),
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
        optimizers.append(optimizer)
        return optimizer

    def epoch_start(epoch: int) -> None:
        """Frozen epochs: the encoder's group at lr 0 (``fixed_lr``, which DDP tolerates
        where ``requires_grad=False`` would not), its BatchNorm in eval unless ``train_bn``.
        Unfreezing starts a new optimiser state, as fastai's ``unfreeze`` (``create_opt``)."""
        frozen = epoch <= frozen_epochs
        model.freeze_encoder(frozen and not cfg.train_bn)
        optimizer = optimizers[-1]
        if frozen_epochs and epoch == frozen_epochs + 1:
            optimizer.state.clear()
        for group in optimizer.param_groups:
            if group.get("encoder"):
                group["fixed_lr"] = frozen
                if frozen:
                    group["lr"] = 0.0

    def step(net: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        images, masks, _ = (t.to(device, non_blocking=True) for t in batch)
        images, masks = aug(images, masks)
        loss, terms = weighted_seg_loss(net(to_input(images)), masks, weights, params)
        return {"loss": loss, **{f"loss_{k}": v for k, v in terms.items()}}

    def epoch_end(outputs: list[dict[str, Any]]) -> dict[str, float]:
        return {k: float(np.mean([o[k] for o in outputs])) for k in outputs[0] if k.startswith("loss_")}

    def predict(net: nn.Module, device: torch.device, shard: DataLoader) -> list[tuple[int, int, int]]:
        """Per validation image: pixel counts (inter, area, true_area) of the ArgMax mask
        (:func:`posthoc.image_stats` at 0.5 on the (B, S, S) foreground probability)."""
        net.eval()
        stats = []
        with torch.no_grad():
            for images, masks, _ in shard:
                pred = _fg_probability(net, images.to(device), cfg.amp).cpu().numpy()
                stats.append(posthoc.image_stats(pred, masks.numpy().astype(bool), 0.5))
        net.train()
        inter, area, true_area = (np.concatenate(s).tolist() for s in zip(*stats, strict=True))
        return list(zip(inter, area, true_area, strict=True))

    def score(records: list[tuple[int, int, int]]) -> dict[str, float]:
        inter, area, true_area = (np.array(column, np.int64) for column in zip(*records, strict=True))
        scores = posthoc.segmentation_scores(inter, area, true_area)
        return {
            "segmenter/val_dice": scores["dice"], "segmenter/val_iou": scores["iou"],
            "val/dice_per_image": scores["dice_per_image"],
        }  # fmt: skip

    evaluate = loader_evaluation(val_loader, predict, score)

    return Recipe(
        stage="segmenter", model=model, train_loader=loader, make_optimizer=make_optimizer,
        lr_at=one_cycles(cfg, cycles, optimizers), step=step, epochs=cfg.epochs, evaluate=evaluate,
        eval_epochs=lambda e: e % cfg.eval_every == 0, monitor="segmenter/val_dice", mode="max",
        patience=cfg.patience, epoch_end=epoch_end, amp=cfg.amp, epoch_start=epoch_start,
    )  # fmt: skip


# ------------------------------------------------------------------------------ jobs


def predict_job(inp: StageInputs, out: Path) -> dict[str, Any]:
    """Both models on the validation fold and the test split, plain and flipped (TTA):
    ``val.npz`` and ``test.npz`` (:func:`raysuite.methods.nn.posthoc.save_predictions`)."""
    cfg: PredictConfig = inp.cfg
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seg_cfg = SegmenterConfig.model_validate(inp.stages["segmenter"])
    segmenter = load_trained(segmenter_model(seg_cfg), inp.upstreams["segmenter"]).to(device)
    classifier = None
    if "classifier" in inp.upstreams:
        cls_cfg = ClassifierConfig.model_validate(inp.stages["classifier"])
        classifier = load_trained(classifier_model(cls_cfg), inp.upstreams["classifier"]).to(device)
    df = splits(inp.data, inp.fold)
    seg_caches = _caches(inp.data, seg_cfg.image_size)
    cls_caches = _caches(inp.data, cls_cfg.image_size) if classifier is not None else None
    start = time.perf_counter()
    counts = {}
    for role in ("val", "test"):
        rows = df.loc[df.role == role]
        seg = _predict_segmenter(segmenter, Radiographs(seg_caches, rows), cfg, device)
        cls = None
        if classifier is not None and cls_caches is not None:
            cls = _predict_classifier(classifier, Radiographs(cls_caches, rows), cfg, device)
        truth = np.stack([seg_caches[1][s] for s in rows.sample_id]).astype(bool)
        posthoc.save_predictions(out / f"{role}.npz", posthoc.Predictions(seg=seg, truth=truth, cls=cls))
        counts[f"predict/{role}_images"] = float(len(rows))
    return {**counts, "predict/seconds": time.perf_counter() - start}


def _predict_segmenter(net: nn.Module, dataset: Radiographs, cfg: PredictConfig, device: torch.device) -> np.ndarray:
    """(N, 2, S, S) uint8 probabilities: the image, and its mirror image flipped back."""
    chunks = []
    with torch.no_grad():
        for images, _, _ in _loader(dataset, cfg.batch_size, False, 0):
            images = images.to(device)
            plain = _fg_probability(net, images, cfg.amp)
            flipped = _fg_probability(net, images.flip(-1), cfg.amp).flip(-1)
            chunks.append(posthoc.quantise(torch.stack([plain, flipped], 1).cpu().numpy()))
    return np.concatenate(chunks)


def _predict_classifier(net: nn.Module, dataset: Radiographs, cfg: PredictConfig, device: torch.device) -> np.ndarray:
    """(N, 2) float32 probabilities of the image and of its mirror image."""
    chunks = []
    with torch.no_grad():
        for images, _, _ in _loader(dataset, cfg.batch_size, False, 0):
            images = images.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=cfg.amp and device.type == "cuda"):
                both = [net(to_input(x)).float() for x in (images, images.flip(-1))]
            chunks.append(torch.sigmoid(torch.cat(both, 1)).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


# ----------------------------------------------------------------------------- sweep


def check(configs: StageConfigs) -> list[tuple[str, str]]:
    """A positives-only segmenter needs the classifier to gate it."""
    if configs.of("segmenter", SegmenterConfig).positives_only and not configs.of("classifier", ClassifierConfig).enabled:
        return [("segmenter.positives_only", "a U-Net trained on positives only needs classifier.enabled (its gate)")]
    return []


# ----------------------------------------------------------------------------- ledger

PAPER = Paper(
    title="Pneumothorax Segmentation",
    authors="Usama Zidan",
    venue="BSc dissertation (Computer Science with Artificial Intelligence), School of Computer Science, "
    "University of Nottingham, May 2020",
)

DEPARTURES = (
    Departure(
        "classifier.weights",
        "§4.5: the ResNeXt was imported from Cadene's pretrained-models.pytorch [59] (variant and weights file not named)",
        "timm's resnext50_32x4d with torchvision's ImageNet weights (ResNeXt50_32X4D_Weights.IMAGENET1K_V1)",
        "the same architecture and ImageNet task through a library cache; [59] is unmaintained",
    ),
    Departure(
        "classifier head",
        "§4.4.1: a CNN that classifies 'Normal' vs 'Abnormal' (fastai: two logits and a softmax)",
        "one logit; sigmoid(z) is the abnormal probability of a two-class softmax over (0, z), and the soft-F1 "
        "loss sees both classes' probabilities (1 - p, p)",
        "the same family of functions with one output fewer",
    ),
    Departure(
        "segmenter U-Net decoder",
        "§4.3, §4.5: fastai v1's unet_learner on a ResNet-34 (DynamicUnet: pixel shuffle, blur, final cross connection)",
        "a plain U-Net decoder (nearest upsampling, skip concatenation, two conv-BN-ReLU per block) on a timm "
        "ResNet-34 encoder with torchvision's ImageNet weights",
        "no fastai dependency; the thesis compares training populations, not decoders",
    ),
    Departure(
        "classifier.lr",
        "§3.6.3, §4.4: one-cycle learning rates; no value is given",
        "a one-cycle peak of 1e-3",
        "the seed gives none",
    ),
    Departure(
        "segmenter.lr",
        "§4.4.2: both U-Nets use 'the same cyclic learning rate ranges'; no value is given",
        "a one-cycle peak of 1e-3 for both cycles and every layer (no discriminative slice after unfreezing)",
        "the seed gives none",
    ),
    Departure("classifier.batch_size", "Table 4.3: no batch size", "32", "the seed gives none"),
    Departure(
        "classifier.beta2",
        "Table 4.3: RAdam (§3.6.2, Liu et al.); the implementation used is not named",
        "torch's RAdam with its default beta2 0.999; beta1 cycled by the one-cycle momentum",
        "the seed gives none",
    ),
    Departure(
        "classifier schedule",
        "Table 4.3: 127 epochs; §4.4.1: Cutout added 'after around 70 epochs' (so training spanned more than one "
        "fit call, split not given); no frozen phase is stated",
        "one fit_one_cycle over 127 epochs with every layer trainable; Cutout from epoch 70 (cutout_from_epoch)",
        "the seed states neither the split of the classifier's fit calls nor a frozen phase",
    ),
    Departure(
        "classifier.cutout_holes",
        "§4.4.1: Cutout 'randomly removes small patches'; no count is given",
        "1 to 4 holes per image",
        "our reading of 'small patches'",
    ),
    Departure(
        "classifier.cutout_length",
        "§4.4.1: Cutout 'randomly removes small patches'; no size is given",
        "square holes of 4-18 % of the image side",
        "our reading of 'small patches'",
    ),
    Departure(
        "augmentations",
        "Table 4.1: fastai v1's transforms (flip, symmetric_warp, rotate, zoom, brightness, contrast)",
        "the same transforms and magnitudes, batched on the device (raysuite.data.cxr_augment), not fastai's code",
        "no fastai dependency; GPU augmentation",
    ),
    Departure(
        "amp",
        "§4.5: fastai on a GTX 2080; the numeric precision is not stated (fastai trains in fp32 unless to_fp16)",
        "float16 autocast on CUDA (classifier.amp, segmenter.amp)",
        "speed; set amp: false for fp32",
    ),
    Departure(
        "data.split",
        "§4.4.1: the classifier on all 10,675 labelled images; §4.4.2: 20 % of the 2,379 positives for validation; "
        "§5.3: 5-fold cross-validation, tested on 'a different test set' (its size not given)",
        "the manifest's patient-level test split of the labelled images is held out; the rest is cut into 5 folds "
        "by patient; both models train on the other 4 folds of the fold's trial",
        "one split serves both models and the cascade's test without leaking patients",
    ),
    Departure(
        "checkpoint selection",
        "§4.1.1, §4.3: fastai's fit_one_cycle, which keeps the last weights; no selection is stated",
        "predict uses each model's best validation epoch (classifier/val_auc, segmenter/val_dice)",
        "the stage loop keeps the best epoch's weights; with the one-cycle's low final learning rate the last "
        "epochs differ little",
    ),
    Departure(
        "predict (uint8 probabilities)",
        "§5.2: thresholds searched on the models' probabilities",
        "probabilities saved as uint8 (1/255 steps), so thresholds act on 255 (flip TTA: 510) levels",
        "a fold's predictions fit in memory and on disk",
    ),
    Departure(
        "posthoc.pixel_thresholds",
        "§5.2: 'a series of thresholds between (0.01, 1) are tested'; the step is not given",
        "0.01 to 0.99 in steps of 0.01",
        "the seed gives no step",
    ),
    Departure(
        "posthoc selection metric",
        "§5.2: the threshold 'that best maximises the models' performance' (Figure 5.4a: 'the best in terms of accuracy')",
        "the highest Dice per image on the validation fold (then Dice; ties to no TTA), evaluated once on the test split",
        "Dice per image is the seed's headline metric (§5.3) and the competition's; the seed names no criterion",
    ),
    Departure(
        "posthoc.tta",
        "§5.2, Figure 5.5: test-time augmentation, predictions on augmented copies averaged (augmentations not listed)",
        "the horizontal flip: the image and its mirror image, flipped back, averaged",
        "the flip is exact to undo for masks; the seed does not list its TTA transforms",
    ),
    Departure(
        "posthoc.search",
        "§5.2: a series of thresholds tested (a grid)",
        "grid by default; one_case_search.yaml searches with Optuna over pixel and classifier thresholds and a "
        "minimum area (beyond the seed)",
        "the search sweep explores beyond the thesis; its Raw and TTA rows stay the thesis'",
    ),
    Departure(
        "Table 5.1 Searched row",
        "Table 5.1: ArgMax, Raw (threshold) and TTA rows only",
        f"an extra row '{SEARCHED}': the best of the configured search, which may also tune a minimum mask area "
        "and the classifier threshold (posthoc.min_areas, posthoc.cls_thresholds)",
        "kept apart so the thesis' rows are never mixed with a wider search",
    ),
    Departure(
        "Table 5.1 CM column",
        "Table 5.1: a CM column (undefined in the text)",
        "not reported",
        "the seed does not define it",
    ),
    Departure(
        "val/dice_per_image before the post-hoc stage",
        "§5.3: the cascade is scored after Algorithm 1 and post-processing",
        "until the post-hoc stage reports, val/dice_per_image is the segmenter's own (ArgMax, ungated, on its "
        "validation population); sweeps rank with objective.scope: last",
        "ASHA can prune on segmenter epochs",
    ),
    Departure(
        "segmenter.*_weight",
        "Tables 4.2, 4.4: the Jaccard loss alone (§3.6.1 lists the losses experimented with)",
        "Jaccard alone by default; one_case_search.yaml searches BCE and focal-Tversky weights (beyond the seed)",
        "the search sweep explores the losses §3.6.1 tried",
    ),
    Departure(
        "classifier.lr and segmenter.lr in one_case_search.yaml",
        "§6.2: learning-rate ranges suggested as future work",
        "Optuna over both learning rates on folds 0 and 1 (beyond the seed)",
        "the search sweep explores beyond the thesis",
    ),
)


def seed_design(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The seed's value of each config key it gives one for (the arm's ``classifier.enabled``
    and ``segmenter.positives_only`` are the thing compared and not listed). fastai v1
    defaults count as the seed's where it trained with fastai (§3.5, §4.5)."""
    design: dict[str, Any] = {
        # Table 4.3, §4.4.1, §4.5
        "classifier.arch": "resnext50_32x4d",
        "classifier.weights": "imagenet",
        "classifier.image_size": 224,
        "classifier.epochs": 127,
        "classifier.loss": "soft_f1",
        "classifier.cutout_from_epoch": 70,
        "classifier.augment": True,
        "classifier.weight_decay": 1e-2,  # fastai v1 wd, true_wd
        "classifier.moms": [0.95, 0.85],  # §3.6.3 cyclic momentum, fastai's values
        # Tables 4.2, 4.4, §4.4.2, §5.3 ("baseline 12 bs")
        "segmenter.encoder": "resnet34",
        "segmenter.weights": "imagenet",
        "segmenter.image_size": 256,
        "segmenter.epochs": 18,
        "segmenter.frozen_epochs": 6,
        "segmenter.batch_size": 12,
        "segmenter.augment": True,
        "segmenter.jaccard_weight": 1.0,
        **{f"segmenter.{name}_weight": 0.0 for name in SEG_LOSSES if name != "jaccard"},
        "segmenter.weight_decay": 1e-2,
        "segmenter.moms": [0.95, 0.85],
        "segmenter.beta2": 0.99,  # fastai v1's Adam betas (0.9, 0.99)
        "segmenter.train_bn": True,  # fastai v1's train_bn
        # §5.2, Table 5.1, Algorithm 1
        "posthoc.search": "grid",
        "posthoc.cls_thresholds": [posthoc.THESIS_CLS_THRESHOLD],
        "posthoc.min_areas": [0],
        "posthoc.tta": ["none", "flip"],
    }
    if not configs.get("classifier", {}).get("enabled", True):
        design = {k: v for k, v in design.items() if not k.startswith("classifier.")}
    return design


def pretrained_needs(configs: dict[str, dict[str, Any]]) -> list[Need]:
    """The ImageNet starts of §4.5: the classifier (when the arm has one) and the U-Net's
    encoder, each checked against its architecture's torchvision state dict."""
    needs = [Need("segmenter.weights", configs["segmenter"]["encoder"])]
    if configs["classifier"]["enabled"]:
        needs.insert(0, Need("classifier.weights", configs["classifier"]["arch"]))
    return needs


_TINY = {"image_size": 64, "num_workers": 0, "batch_size": 8, "weights": "none"}
METHOD = Method(
    name="one_case_cascade",
    seed="004_20d348af13e8b785.txt",
    data_format="siim_acr",
    stages={
        "classifier": StageDef("classifier", ClassifierConfig, classifier_recipe, cacheable=True,
                               skip=lambda cfg: not cfg.enabled),
        "segmenter": StageDef("segmenter", SegmenterConfig, segmenter_recipe, cacheable=True),
        "predict": StageDef("predict", PredictConfig, consumes=("classifier", "segmenter"), cacheable=True,
                            job=predict_job),
        "posthoc": StageDef("posthoc", PosthocConfig, consumes="predict", job=posthoc_job, job_on="driver"),
    },  # fmt: skip
    monitor="val/dice_per_image",
    tiny={
        # a from-scratch classifier needs the synthetic images' full 128 px to see a crescent
        "classifier": {**_TINY, "arch": "resnet18", "lr": 3e-3, "image_size": 128},
        "segmenter": {**_TINY, "encoder": "resnet18", "decoder_channels": [64, 32, 16, 8, 8], "lr": 3e-3},
    },
    smoke={  # enough epochs for the synthetic crescents to be found (a few seconds each)
        "classifier": {"epochs": 5, "cutout_from_epoch": 4},
        "segmenter": {"epochs": 10, "batch_size": 4},  # ~10 positives: a few steps per epoch
    },
    smoke_cases=48,
    check=check,
    prepare_data=prepare_data,
    manifest_hash=manifest_hash,
    baseline={"classifier.enabled": False, "segmenter.positives_only": False},
    report=report,
    posthoc_knobs=POSTHOC_KNOBS,
    default_folds=FOLDS,
    progress_stage="segmenter",
    paper=PAPER,
    departures=DEPARTURES,
    seed_design=seed_design,
    pretrained=pretrained_needs,
    # estimates (the seed reports no times): one GTX 2080-class GPU, mixed precision. The
    # classifier: ~8.5k images a fold at 224 px through a ResNeXt-50 (~200 images/s) plus
    # validation; the segmenter: the baseline's epoch over all ~8.5k images at 256 px (the
    # One Case U-Net sees the ~1.9k positives, about a quarter of it); predict: both
    # models, plain and flipped, on a fold's validation and test images (seconds in all)
    epoch_seconds={"classifier": 60.0, "segmenter": 60.0, "predict": 30.0},
    metrics={
        "classifier": (*(f"classifier/val_{k}" for k in ("auc", "precision", "recall", "f1")), "classifier/val_auc_best"),
        "segmenter": (
            *(f"segmenter/loss_{name}" for name in SEG_LOSSES),  # the losses weighted above 0
            "segmenter/val_dice", "segmenter/val_iou", "val/dice_per_image", "segmenter/val_dice_best",
        ),
        "predict": ("predict/val_images", "predict/test_images", "predict/seconds"),
        "posthoc": (
            *(f"{split}/{k}" for split in ("val", "test") for k in (*SCORES, "cls_auc", "cls_precision", "cls_recall", "cls_f1")),
            *(f"{split}/{row}/{k}" for split in ("val", "test") for row in ROWS for k in SCORES),
            *(f"posthoc/{k}" for k in ("pixel_threshold", "min_area", "cls_threshold", "tta_flip", "combinations", "epoch")),
        ),
    },  # fmt: skip
)
