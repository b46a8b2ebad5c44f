"""one_case_cascade (seed 004): a classifier gates a U-Net trained on positive images only
("One Case"), with thresholds and TTA chosen after training, on SIIM-ACR pneumothorax.

Stages (a DAG: the two models are independent and cached independently):

- ``classifier`` (Table 4.3): timm ResNeXt-50 32x4d with one logit, soft-F1 loss (§3.6.1),
  RAdam, 224 px, all labelled images, Table 4.1 augmentations; Cutout from epoch 70 of 127
  (§4.4.1). ``enabled: false`` skips it (the baseline arm has no classifier).
- ``segmenter`` (Tables 4.2, 4.4): U-Net with a ResNet-34 encoder, two-class softmax,
  Jaccard loss (optionally weighted with the §3.6.1 losses), Adam, 256 px, 18 epochs;
  ``positives_only`` (the One Case model) or all images (the baseline U-Net).
- ``predict`` (job, one worker): both models on the validation fold and the test split,
  each image also flipped (TTA), probabilities saved once (uint8, compressed).
- ``posthoc`` (job, in the trial driver): pixel threshold, classifier threshold, minimum
  area and TTA searched on the saved validation predictions (grid or Optuna, §5.2), the
  chosen values evaluated once on the test split; every combination is a table artifact.

Data (§4.2): labelled SIIM-ACR images; the manifest's patient-level test split is held out
and the rest is cut into K = 5 folds by patient (``search.repeats.fold``: each fold one
repeat, §5.3 reports fold means ± std); fold k validates, the others train. Images are the
DICOM grey levels / 255, resized, repeated to 3 channels and normalised with ImageNet
statistics (§4.1.1).

Metrics (§5.1, Table 5.1): ``val/dice_per_image`` (the competition's Dice per image: 1 when
prediction and truth are both empty), ``val/dice`` and ``val/iou`` over all pixels, the
classifier's AUC, F1, precision and recall; each for the ArgMax, Raw (searched thresholds)
and TTA rows of Table 5.1 as ``val/<row>/<metric>``. Until the post-hoc stage reports,
``val/dice_per_image`` is the segmenter's own (ArgMax, ungated, on its validation
population), so ASHA can prune on segmenter epochs.
"""

from __future__ import annotations

import hashlib
import json
import math
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
from raysuite.methods.base import ARTIFACT, Method, StageConfig, StageDef, StageInputs
from raysuite.methods.nn import posthoc
from raysuite.methods.nn.cls_metrics import precision_recall_f1, roc_auc
from raysuite.methods.nn.seg_losses import soft_f1_loss, weighted_seg_loss
from raysuite.methods.nn.unet import TimmUNet, load_encoder_weights
from raysuite.methods.nn.weights import load_imagenet_weights
from raysuite.report.summary import summarise
from raysuite.train.loop import Recipe, load_state, loader_evaluation

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet (fastai imagenet_stats)
FOLDS = 5  # §5.3: 5-fold cross-validation
SEG_LOSSES = ("jaccard", "dice", "bce", "focal", "tversky", "combo")


def _timm_name(name: str) -> str:
    import timm

    if not timm.list_models(name):
        raise ValueError(f"{name!r} is not a timm model name")
    return name


class CascadeStageConfig(StageConfig):
    num_workers: int = Field(4, ge=0)
    amp: bool = True
    augment: bool = True  # Table 4.1 (flip, symmetric warp, rotate, zoom, brightness, contrast)
    weights: str | None = None  # local ImageNet state dict of the encoder (nothing is downloaded)
    eval_every: int = Field(1, ge=1)
    patience: int | None = Field(None, ge=1)
    max_train_images: int | None = Field(None, ge=1)  # smoke runs


class ClassifierConfig(CascadeStageConfig):
    """Table 4.3: ResNeXt-50 (cardinality 32), RAdam, F1 loss, 224 px, 127 epochs. The
    seed gives no batch size or learning rate: 32 and a one-cycle peak of 1e-3 (fastai's
    ``fit_one_cycle`` schedule, which the seed used, §3.6.3) are our choices."""

    enabled: bool = True  # false: no classifier (the baseline arm)
    arch: str = "resnext50_32x4d"  # any timm model name
    image_size: int = Field(224, ge=32)
    epochs: int = Field(127, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)  # fastai's default wd
    loss: Literal["soft_f1", "bce"] = "soft_f1"
    cutout_from_epoch: int | None = Field(70, ge=1)  # §4.4.1: "after around 70 epochs"; null: never
    cutout_holes: tuple[int, int] = (1, 4)
    cutout_length: tuple[float, float] = (0.04, 0.18)  # hole side, fraction of the image side

    @field_validator("arch")
    @classmethod
    def _arch(cls, name: str) -> str:
        return _timm_name(name)


class SegmenterConfig(CascadeStageConfig):
    """Tables 4.2 and 4.4: U-Net, ResNet-34 encoder, Adam, Jaccard loss, 256 px, 18 epochs
    (the baseline: 6 with the ImageNet encoder frozen + 12). Batch 12 is the seed's
    Kaggle submission setting ("baseline 12 bs"). Loss = sum of the weighted §3.6.1 terms."""

    positives_only: bool = True  # the "One Case" U-Net; false: the baseline trained on all
    encoder: str = "resnet34"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    image_size: int = Field(256, ge=32)
    epochs: int = Field(18, ge=1)
    frozen_epochs: int = Field(6, ge=0)  # encoder frozen first; only with ``weights``
    batch_size: int = Field(12, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
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


class PosthocConfig(StageConfig):
    """§5.2: thresholds and TTA searched on saved validation predictions. The grid's
    defaults are :func:`raysuite.methods.nn.posthoc.default_space` (pixel thresholds
    0.05..0.95 — the seed searched (0.01, 1) —, classifier thresholds 0.1..0.9, minimum
    areas 0/64/256/1024 px at the segmenter's size, TTA none / flip)."""

    search: Literal["grid", "optuna"] = "grid"
    pixel_thresholds: list[float] = Field(default_factory=lambda: list(posthoc.default_space().pixel_thresholds))
    cls_thresholds: list[float] = Field(default_factory=lambda: list(posthoc.default_space().cls_thresholds))
    min_areas: list[int] = Field(default_factory=lambda: list(posthoc.default_space().min_areas))
    tta: list[Literal["none", "flip"]] = Field(default_factory=lambda: list(posthoc.default_space().tta))
    optuna_trials: int = Field(200, ge=1)
    pixel_threshold_range: tuple[float, float] = (0.01, 0.99)
    cls_threshold_range: tuple[float, float] = (0.01, 0.99)
    min_area_range: tuple[int, int] = (0, 2048)

    @field_validator("pixel_thresholds", "cls_thresholds")
    @classmethod
    def _unit(cls, values: list[float]) -> list[float]:
        if not values or any(not 0 <= v < 1 for v in values):
            raise ValueError("thresholds must be a non-empty list in [0, 1)")
        return values

    @field_validator("min_areas", "tta")
    @classmethod
    def _non_empty(cls, values: list[Any]) -> list[Any]:
        if not values:
            raise ValueError("needs at least one value")
        return values

    def space(self) -> posthoc.SearchSpace:
        return posthoc.SearchSpace(
            tuple(self.pixel_thresholds), tuple(self.cls_thresholds), tuple(self.min_areas), tuple(self.tta)
        )


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
    df = df[labelled].reset_index(drop=True)
    test = df.split == "test"
    rest = manifest.assign_folds(df[~test], folds(data), (data.get("split") or {}).get("seed", 0))
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
    rows = df[(df.role == "train") & (df.positive | (not positives_only))]
    return rows.head(cfg.max_train_images) if cfg.max_train_images else rows


# ---------------------------------------------------------------------------- models


def classifier_model(cfg: ClassifierConfig) -> nn.Module:
    """timm ``arch`` with one output logit: (B, 3, S, S) -> (B, 1)."""
    import timm

    model = timm.create_model(cfg.arch, pretrained=False, num_classes=1)
    if cfg.weights:
        load_imagenet_weights(model, cfg.weights)
    return model


def segmenter_model(cfg: SegmenterConfig) -> TimmUNet:
    """U-Net, two-class logits: (B, 3, S, S) -> (B, 2, S, S)."""
    model = TimmUNet(cfg.encoder, num_classes=2, decoder_channels=tuple(cfg.decoder_channels))
    if cfg.weights:
        load_encoder_weights(model, cfg.weights)
    return model


def load_trained(model: nn.Module, checkpoint_dir: Path) -> nn.Module:
    """The stage's best weights (by its monitored metric), else its last."""
    state = load_state(checkpoint_dir)
    model.load_state_dict(state.get("best_model") or state["model"])
    return model.eval()


# ---------------------------------------------------------------------------- recipes


def one_cycle(step: int, total: int, peak: float, pct_start: float = 0.3, div: float = 25.0, final_div: float = 1e5) -> float:
    """fastai's ``fit_one_cycle`` learning rate (§3.6.3, Smith): cosine from peak/div up to
    peak over the first ``pct_start`` of the steps, then cosine down to peak/final_div."""
    warm = max(1, int(total * pct_start))
    if step < warm:
        start, end, t = peak / div, peak, step / warm
    else:
        start, end, t = peak, peak / final_div, (step - warm) / max(1, total - warm)
    return end + (start - end) * (1 + math.cos(math.pi * min(1.0, t))) / 2


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
    loader = _loader(Radiographs(caches, train), inp.local_batch(cfg.batch_size), True, cfg.num_workers,
                     drop_last=len(train) > cfg.batch_size)  # fmt: skip
    val_loader = _loader(Radiographs(caches, df[df.role == "val"]), 2 * cfg.batch_size, False, 0)
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

    return Recipe(
        stage="classifier", model=classifier_model(cfg), train_loader=loader,
        make_optimizer=lambda m: torch.optim.RAdam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        lr_at=lambda s, total: one_cycle(s, total, cfg.lr), step=step, epochs=cfg.epochs, evaluate=evaluate,
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
    val = df[(df.role == "val") & (df.positive | (not cfg.positives_only))]
    loader = _loader(Radiographs(caches, train), inp.local_batch(cfg.batch_size), True, cfg.num_workers,
                     drop_last=len(train) > cfg.batch_size)  # fmt: skip
    val_loader = _loader(Radiographs(caches, val), cfg.batch_size, False, 0)
    aug = _augmenter(cfg, inp.seed * 1000 + inp.rank)
    model = segmenter_model(cfg)
    weights, params = cfg.loss_weights(), cfg.loss_params()
    optimizers: list[torch.optim.Optimizer] = []

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        encoder = list(module.encoder.parameters())
        ids = {id(p) for p in encoder}
        rest = [p for p in module.parameters() if id(p) not in ids]
        optimizer = torch.optim.Adam(
            [{"params": encoder, "encoder": True}, {"params": rest}], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        optimizers.append(optimizer)
        return optimizer

    def epoch_start(epoch: int) -> None:
        """Table 4.2's frozen epochs (with loaded weights only): the encoder's BN in eval and
        its parameter group at lr 0 (``fixed_lr``), which DDP tolerates where
        ``requires_grad=False`` would not."""
        frozen = bool(cfg.weights) and epoch <= cfg.frozen_epochs
        model.freeze_encoder(frozen)
        for group in optimizers[-1].param_groups:
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
        lr_at=lambda s, total: one_cycle(s, total, cfg.lr), step=step, epochs=cfg.epochs, evaluate=evaluate,
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
    segmenter = load_trained(segmenter_model(seg_cfg.model_copy(update={"weights": None})), inp.upstreams["segmenter"]).to(device)
    classifier = None
    if "classifier" in inp.upstreams:
        cls_cfg = ClassifierConfig.model_validate(inp.stages["classifier"]).model_copy(update={"weights": None})
        classifier = load_trained(classifier_model(cls_cfg), inp.upstreams["classifier"]).to(device)
    df = splits(inp.data, inp.fold)
    seg_caches = _caches(inp.data, seg_cfg.image_size)
    cls_caches = _caches(inp.data, cls_cfg.image_size) if classifier is not None else None
    start = time.perf_counter()
    counts = {}
    for role in ("val", "test"):
        rows = df[df.role == role]
        seg = _predict_segmenter(segmenter, Radiographs(seg_caches, rows), cfg, device)
        cls = None
        if cls_caches is not None:
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


ROWS = {"argmax": "ArgMax", "raw": "Raw", "tta": "TTA"}  # Table 5.1's post-processing rows
SCORES = ("dice_per_image", "dice", "iou")


def posthoc_job(inp: StageInputs, out: Path) -> dict[str, Any]:
    """Search on the saved validation predictions, evaluate the choice once on test.

    Reports the best combination as ``val/*`` and ``test/*``, Table 5.1's rows as
    ``{val,test}/{argmax,raw,tta}/*``, the choice as ``posthoc/*``, and two artifacts:
    every combination tried (``posthoc/val_search.csv``) and ``posthoc/table_5_1.csv``."""
    cfg: PosthocConfig = inp.cfg
    src = inp.upstreams["predict"]
    val, test = posthoc.load_predictions(src / "val.npz"), posthoc.load_predictions(src / "test.npz")
    if cfg.search == "grid":
        table = posthoc.grid_search(val, cfg.space())
    else:
        from raysuite.tune.posthoc_search import optuna_search

        bounds = {
            "pixel_threshold": cfg.pixel_threshold_range, "cls_threshold": cfg.cls_threshold_range,
            "min_area": cfg.min_area_range, "tta": tuple(cfg.tta),
        }  # fmt: skip
        table = optuna_search(val, bounds, cfg.optuna_trials, cfg.seed)
    chosen = {"overall": _params(table.iloc[0])}
    for row, mode in (("raw", "none"), ("tta", "flip")):
        subset = table[table.tta == mode]
        if not subset.empty:
            chosen[row] = _params(subset.iloc[0])
    chosen["argmax"] = dict(posthoc.ARGMAX)
    metrics: dict[str, Any] = {}
    table_rows = []
    caches = {"val": posthoc.StatsCache(val), "test": posthoc.StatsCache(test)}  # pixel passes shared by the rows
    for name, params in chosen.items():
        for split, pred in (("val", val), ("test", test)):
            result = posthoc.evaluate(pred, **params, cache=caches[split])
            prefix = split if name == "overall" else f"{split}/{name}"
            metrics.update({f"{prefix}/{k}": float(result[k]) for k in SCORES})
            if name == "overall":
                metrics.update(_classifier_metrics(split, pred, params, result))
            else:
                table_rows.append({"row": ROWS[name], "split": split, **params, **{k: result[k] for k in SCORES}})
    best = chosen["overall"]
    metrics.update({
        "posthoc/pixel_threshold": best["pixel_threshold"], "posthoc/min_area": float(best["min_area"]),
        "posthoc/cls_threshold": best["cls_threshold"] if val.cls is not None else float("nan"),
        "posthoc/tta_flip": float(best["tta"] == "flip"), "posthoc/combinations": float(len(table)),
        # logged one step after the segmenter's last epoch
        "posthoc/epoch": float(inp.stages["segmenter"]["epochs"] + 1),
        f"{ARTIFACT}posthoc/val_search.csv": table.to_csv(index=False),
        f"{ARTIFACT}posthoc/table_5_1.csv": pd.DataFrame(table_rows).to_csv(index=False),
    })  # fmt: skip
    return metrics


def _params(row: pd.Series) -> dict[str, Any]:
    cls = row.get("cls_threshold", float("nan"))
    return {
        "pixel_threshold": float(row.pixel_threshold), "cls_threshold": 0.0 if pd.isna(cls) else float(cls),
        "min_area": int(row.min_area), "tta": str(row.tta),
    }  # fmt: skip


def _classifier_metrics(split: str, pred: posthoc.Predictions, params: dict[str, Any], result: dict[str, Any]) -> dict[str, float]:
    """AUC of the classifier (under the chosen TTA) and its gate's precision/recall/F1."""
    if pred.cls is None:
        return {}
    out = {f"{split}/cls_auc": roc_auc(posthoc.tta_cls_probability(pred.cls, params["tta"]), pred.labels)}
    out.update({f"{split}/{k}": float(result[k]) for k in ("cls_precision", "cls_recall", "cls_f1")})
    return out


# ----------------------------------------------------------------------------- sweep


def report(trials: pd.DataFrame, out: Path, metric: str) -> list[Path]:
    """The seed's Table 5.1 on the parent run: per configuration (arm) and post-processing
    row, mean ± std over folds (:func:`~raysuite.report.summary.summarise`) of Dice per
    image, Dice and IoU on the validation folds and on the test split."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, label in ROWS.items():
        for split in ("val", "test"):
            for score in SCORES:
                column = f"{split}/{key}/{score}"
                if column not in trials:
                    continue
                for r in summarise(trials, column).to_dict("records"):
                    row = rows.setdefault((r["config"], label), {"config": r["config"], "postprocessing": label, "n": r["n"]})
                    row[f"{split} {score}"] = r["mean ± std"]
    if not rows:
        return []
    path = out / "table_5_1.csv"
    pd.DataFrame(sorted(rows.values(), key=lambda r: r["config"])).to_csv(path, index=False)
    return [path]


def check(configs: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """A positives-only segmenter needs the classifier to gate it."""
    if configs["segmenter"]["positives_only"] and not configs["classifier"]["enabled"]:
        return [("segmenter.positives_only", "a U-Net trained on positives only needs classifier.enabled (its gate)")]
    return []


_TINY = {"image_size": 64, "num_workers": 0, "batch_size": 8}
METHOD = Method(
    name="one_case_cascade",
    seed="004_20d348af13e8b785.txt",
    data_format="siim_acr",
    stages={
        "classifier": StageDef("classifier", ClassifierConfig, classifier_recipe, cacheable=True,
                               skip=lambda cfg: not cfg["enabled"]),
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
    default_folds=FOLDS,
    progress_stage="segmenter",
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
