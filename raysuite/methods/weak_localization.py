"""weak_localization (seed 003): thoracic disease localisation on a P x P patch grid from
image labels and a few boxes, on ChestX-ray14.

Stages:

- ``train`` (§3.1-3.2, §4): the base model (ResNet-50 without pooling and classifier,
  started from ImageNet weights (``weights: imagenet``, for the seed's model and Li et al.'s
  alike), feature map resized to P x P = 20 x 20, conv + BN + ReLU, conv to K = 14 logits) with
  BlurPool anti-aliasing before its stride-2 steps (§3.3, ``antialias``), trained with the
  seed's relaxed loss (eq. 12, ``loss: seed``) or Li et al.'s (eqs. 1-3, ``loss: li``).
  Thresholds are per class and either fixed (sweepable, shared or per class) or fitted by
  the seed's alternation (``thresholds: alternate``: train the weights with the thresholds
  frozen, then fit the thresholds with the weights frozen, every ``alternate_every`` epochs).
  Adam, weight decay 0.01, exponentially decaying lr from 1e-3, batch 48 (§4).
- ``crf`` (§3.3, Figure 3): the trained base frozen, a feature branch and a PAC-CRF (19 x 19
  window) trained on top with the same loss. ``enabled: false`` skips it (the base model).

Data (§4): ChestX-ray14 at 512 x 512 in [-1, 1]. The images with a box are cut into K = 5
folds by patient; fold k evaluates and the other 80 % train, joined by a share
``unannotated_fraction`` (0 or 0.2 in the seed) of the images without a box, drawn at random
(nested: the 10 % draw is inside the 20 % draw), leaving out patients of the evaluated fold.

Metrics (§4): ``val/loc_acc_iou`` and ``val/loc_acc_ior``, the share of annotated (image,
class) pairs whose detected region (patches with z >= 0.5) reaches IoU >= T or IoR >= T
(T = ``loc_threshold``, 0.1), mean over the box classes of the fold, and per class as
``val/loc_acc_iou/<class>``; image-level ``val/auc`` per class and mean. The model is the
last epoch's: the evaluated fold is the seed's test fold, so it selects nothing.

Every place this departs from the seed is in :data:`DEPARTURES` (``raysuite plan`` and the
report list them); :func:`seed_design` gives the seed's own values of the config keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from raysuite.data import manifest
from raysuite.data.cache import ShardCache
from raysuite.data.datasets import ensure_manifest, manifest_path, prepare
from raysuite.data.formats import chestxray14 as cxr14
from raysuite.methods.base import (
    Method,
    OptimConfig,
    StageConfigs,
    StageDef,
    StageInputs,
)
from raysuite.methods.ledger import Departure, Paper
from raysuite.methods.nn.cls_metrics import roc_auc
from raysuite.methods.nn.loc_metrics import localisation_table
from raysuite.methods.nn.patch_grid import CrfNet, PatchGridNet, blur_backbone
from raysuite.methods.nn.pretrained import NONE, Need
from raysuite.methods.nn.weak_loc_losses import (
    FitStatistics,
    Thresholds,
    ThresholdSet,
    class_balance,
    li_loss,
    log_any_positive,
    relaxed_loss,
)
from raysuite.report.summary import summarise
from raysuite.train.loop import Evaluation, Recipe, load_state, loader_evaluation

CLASSES, BOX_CLASSES = cxr14.CLASSES, cxr14.BOX_CLASSES
THRESHOLD_NAMES = ("tau", "rho", "tau_hat", "rho_hat")


class WeakLocStageConfig(OptimConfig):
    """§4 "Training Details": Adam with weight decay 0.01, lr 1e-3 decaying exponentially
    (the rate is not given: ``lr_decay`` 0.95 per epoch is ours), batch 48. The seed gives
    no epoch counts: 30 (train) and 10 (crf) are ours."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(48, ge=2)
    lr: float = Field(1e-3, gt=0)
    lr_decay: float = Field(0.95, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    loc_threshold: float = Field(0.1, gt=0, le=1)  # T of IoU >= T / IoR >= T
    eval_every: int = Field(1, ge=1)
    num_workers: int = Field(4, ge=0)
    amp: bool = True
    max_train_images: int | None = Field(None, ge=1)  # smoke runs: annotated images first


def _per_class(values: dict[str, float], allowed: tuple[str, ...]) -> dict[str, float]:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; classes: {list(allowed)}")
    return values


class TrainConfig(WeakLocStageConfig):
    """The base model and the loss (shared with the ``crf`` stage). Thresholds (eq. 12):
    ``tau``, ``rho`` (fractions of |b| and |b̄|, box classes) and ``tau_hat``, ``rho_hat``
    (patch counts) apply to every class unless ``<name>_per_class`` names it. The seed
    gives no values; the defaults are ours: half the box must fire, at most 2 % of the rest;
    a positive image needs two patches of evidence (more than one, the seed's Issue 1), a
    negative at most one."""

    arch: str = "resnet50"  # timm ResNet
    # §4 "We initialize the weights based on ImageNet pre-training": ``imagenet`` (torchvision's
    # IMAGENET1K_V1 for resnet50, timm's default tag for other archs), ``none`` (scratch) or
    # a local state-dict file of plain ``arch``; resolved by the sweep driver (Method.pretrained)
    weights: str = "imagenet"
    antialias: bool = True  # §3.3 BlurPool before each stride-2 step
    blur_size: int = Field(3, ge=2, le=7)  # binomial filter taps
    image_size: int = Field(512, ge=32)
    grid: int = Field(20, ge=2)  # P
    head_channels: int = Field(512, ge=1)
    unannotated_fraction: float = Field(0.0, ge=0, le=1)  # §4 settings (a) 0 and (b) 0.2
    loss: Literal["seed", "li"] = "seed"
    lambda_ann: float = Field(70.0, ge=0)  # §4
    # eq. 11; None: per class, positives / negatives of the training images
    gamma: float | None = Field(None, ge=0)
    tau: float = Field(0.5, ge=0, le=1)
    rho: float = Field(0.02, ge=0, le=1)
    tau_hat: float = Field(2.0, ge=0)
    rho_hat: float = Field(1.0, ge=0)
    tau_per_class: dict[str, float] = Field(default_factory=dict)
    rho_per_class: dict[str, float] = Field(default_factory=dict)
    tau_hat_per_class: dict[str, float] = Field(default_factory=dict)
    rho_hat_per_class: dict[str, float] = Field(default_factory=dict)
    thresholds: Literal["fixed", "alternate"] = "fixed"
    alternate_every: int = Field(2, ge=1)  # epochs of weight training between threshold fits
    # fitted tau - rho (keeps the fit off the degenerate solution tau = rho)
    fit_margin: float = Field(0.25, gt=0, lt=1)
    fit_margin_hat: float = Field(1.0, gt=0)  # fitted tau_hat - rho_hat, in patches

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: object) -> object:
        return NONE if value is None else value  # ``weights: null`` reads as scratch, as before

    @field_validator("arch")
    @classmethod
    def _arch(cls, name: str) -> str:
        if not name.startswith(("resnet", "resnext")):
            raise ValueError(f"{name!r}: the patch-grid backbone is a timm ResNet (e.g. resnet50)")
        return name

    @field_validator("tau_per_class", "rho_per_class")
    @classmethod
    def _box_classes(cls, values: dict[str, float]) -> dict[str, float]:
        if any(not 0 <= v <= 1 for v in values.values()):
            raise ValueError("fractions must lie in [0, 1]")
        return _per_class(values, BOX_CLASSES)

    @field_validator("tau_hat_per_class", "rho_hat_per_class")
    @classmethod
    def _all_classes(cls, values: dict[str, float]) -> dict[str, float]:
        if any(v < 0 for v in values.values()):
            raise ValueError("patch counts must be non-negative")
        return _per_class(values, CLASSES)

    def threshold_set(self) -> ThresholdSet:
        """(K,) tensors of the four thresholds, per-class values over the shared ones."""
        values = {}
        for name in THRESHOLD_NAMES:
            shared, specific = getattr(self, name), getattr(self, f"{name}_per_class")
            values[name] = torch.tensor(
                [specific.get(c, shared) for c in CLASSES], dtype=torch.float32
            )
        return ThresholdSet(**values)


class CrfConfig(WeakLocStageConfig):
    """§3.3: a 19 x 19 PAC-CRF on the frozen base; its feature branch has two conv layers,
    each followed by ReLU and BN, and outputs K channels ("a tensor with the same size").
    Mean-field steps (5) and the branch's hidden width (256) are ours."""

    enabled: bool = True
    epochs: int = Field(10, ge=1)
    size: int = Field(19, ge=3)
    steps: int = Field(5, ge=1)
    feature_channels: int = Field(len(CLASSES), ge=1)
    hidden: int = Field(256, ge=1)

    @field_validator("size")
    @classmethod
    def _odd(cls, size: int) -> int:
        if size % 2 == 0:
            raise ValueError("the PAC window size must be odd")
        return size


# ------------------------------------------------------------------------------ data


def prepare_data(data: dict[str, Any]) -> None:
    """Synthesise a ChestX-ray14 layout when the root is absent (and allowed), then ingest."""
    prepare(data, lambda root: any(root.glob(cxr14.DATA_ENTRY_ALTERNATIVES[0])), default_cases=80)


def folds(data: dict[str, Any]) -> int:
    return int((data.get("split") or {}).get("folds") or cxr14.FOLDS)


def _split_seed(data: dict[str, Any]) -> int:
    return int((data.get("split") or {}).get("seed", 0))


def splits(data: dict[str, Any], fold: int | None, unannotated_fraction: float) -> pd.DataFrame:
    """Manifest rows with ``annotated`` (the image has a box) and ``role``: ``val`` (fold
    ``fold`` of the annotated images, K folds by patient), ``train`` (the other annotated
    images and the drawn unannotated ones) or ``unused``.

    The unannotated draw is round(f * N) images of the N without a box, in one seeded
    order (so draws are nested across f), skipping patients of the evaluated fold so that
    no patient is on both sides.
    """
    df, _ = ensure_manifest(data)
    annotated = df.boxes.map(lambda b: b is not None and len(b) > 0).astype(bool)
    df = df.assign(annotated=annotated, role="unused")
    if not annotated.any():
        raise ValueError(
            f"{manifest_path(data)}: no image has a box (BBox_List_2017.csv); nothing to localise"
        )
    boxed = manifest.assign_folds(df.loc[annotated], folds(data), _split_seed(data))
    in_val = boxed.fold.to_numpy() == (fold or 0)
    df.loc[boxed.index, "role"] = np.where(in_val, "val", "train")
    val_patients = set(boxed.patient_key[in_val])
    pool = df.loc[~annotated].sort_values("sample_id")
    order = np.random.default_rng(_split_seed(data) + 3).permutation(len(pool))
    wanted = int(round(unannotated_fraction * len(pool)))
    eligible = [i for i in pool.index[order] if pool.patient_key[i] not in val_patients]
    df.loc[eligible[:wanted], "role"] = "train"
    return df


def manifest_hash(data: dict[str, Any], stage: str, cfg: Any) -> str:
    """The manifest's content hash, the fold count and split seed; the fold itself and the
    unannotated share are in every stage key already (fold, config)."""
    _, meta = ensure_manifest(data)
    blob = f"{meta['hash']}|{folds(data)}|{_split_seed(data)}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _ImageLoader:
    """Picklable ``sample_id -> (S, S) uint8`` image for the shard cache (8-bit sources)."""

    def __init__(self, root: Path, rows: dict[str, dict[str, Any]], prep: cxr14.Preprocessing):
        self.root, self.rows, self.prep = root, rows, prep

    def __call__(self, sample_id: str) -> np.ndarray:
        image = cxr14.preprocess(self.root, self.rows[sample_id], self.prep)
        return np.round(image * 255).astype(np.uint8)


def _image_cache(data: dict[str, Any], prep: cxr14.Preprocessing) -> ShardCache:
    """Every manifest image at ``prep.size``, uint8 in memory-mapped shards (512 px: 256 KiB
    an image), built on first use."""
    df, meta = ensure_manifest(data)
    rows = {r["sample_id"]: r for r in df.to_dict("records")}
    loader = _ImageLoader(Path(data["root"]), rows, prep)
    return ShardCache(
        manifest_path(data),
        meta["hash"],
        f"{prep.key()}-u8",
        list(rows),
        loader,
        shard_size=64,
        dtype=np.uint8,
    )


class GridImages(Dataset):
    """Rows -> ((1, S, S) image in [0, 1], labels (K,), annotated (K,), boxes (K, P, P)),
    the targets of :func:`raysuite.data.formats.chestxray14.targets`."""

    def __init__(self, images: ShardCache, rows: pd.DataFrame, prep: cxr14.Preprocessing):
        self.images, self.prep = images, prep
        self.rows = rows.to_dict("records")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        row = self.rows[i]
        image = torch.from_numpy(self.images[row["sample_id"]] / 255.0).float()[None]
        t = cxr14.targets(row, self.prep)
        return (
            image,
            torch.from_numpy(t["labels"]),
            torch.from_numpy(t["annotated"]),
            torch.from_numpy(t["patches"]),
        )


def to_input(images: torch.Tensor, prep: cxr14.Preprocessing) -> torch.Tensor:
    """[0, 1] -> the seed's [-1, 1] (``prep.model_range``), same shape."""
    lo, hi = prep.model_range
    return images * (hi - lo) + lo


def _train_rows(df: pd.DataFrame, cfg: WeakLocStageConfig) -> pd.DataFrame:
    rows = df.loc[df.role == "train"].sort_values("annotated", ascending=False, kind="stable")
    return rows.head(cfg.max_train_images) if cfg.max_train_images else rows


def _gamma(cfg: TrainConfig, rows: pd.DataFrame) -> torch.Tensor:
    """(K,) eq. 11's gamma: ``cfg.gamma``, or per class :func:`class_balance` of ``rows``."""
    if cfg.gamma is not None:
        return torch.full((len(CLASSES),), float(cfg.gamma))
    labels = np.array(
        [[c in set(r) for c in CLASSES] for r in rows["labels"]], dtype=float
    ).reshape(-1, len(CLASSES))
    return torch.tensor(class_balance(labels), dtype=torch.float32)


def _class_boxes(row: dict[str, Any], grid: int) -> dict[int, np.ndarray]:
    """Class index -> (M, 4) boxes of the row in patch units."""
    xyxy, names = cxr14.scaled_boxes(row, grid)
    out: dict[int, list[np.ndarray]] = {}
    for box, name in zip(xyxy, names, strict=True):
        out.setdefault(CLASSES.index(name), []).append(box)
    return {k: np.stack(v) for k, v in out.items()}


# ---------------------------------------------------------------------------- models


def base_model(cfg: TrainConfig, weights: Path | None = None) -> PatchGridNet:
    """The base model with ``cfg``'s thresholds as buffers: (B, 1, S, S) -> (B, K, P, P).
    ``weights``: the local ImageNet state dict its backbone starts from (None: scratch)."""
    backbone = blur_backbone(cfg.arch, cfg.antialias, cfg.blur_size, weights)
    model = PatchGridNet(backbone, len(CLASSES), cfg.grid, cfg.head_channels)
    model.thresholds = Thresholds(cfg.threshold_set())
    return model


def crf_model(cfg: CrfConfig, base: PatchGridNet) -> CrfNet:
    """The frozen ``base`` with a feature branch and a PAC-CRF; thresholds continue from the base's."""
    model = CrfNet(base, cfg.feature_channels, cfg.size, cfg.steps, cfg.hidden)
    model.thresholds = Thresholds(thresholds_of(base).get())
    return model


def thresholds_of(model: nn.Module) -> Thresholds:
    """The :class:`Thresholds` buffers :func:`base_model` and :func:`crf_model` attach."""
    thresholds = model.thresholds
    assert isinstance(thresholds, Thresholds), type(thresholds)
    return thresholds


M = TypeVar("M", bound=nn.Module)


def load_trained(model: M, checkpoint_dir: Path) -> M:
    """The stage's final weights (and thresholds) from its checkpoint."""
    state = load_state(checkpoint_dir)
    model.load_state_dict(state["model"])
    return model.eval()


def image_scores(logits: torch.Tensor, loss: str) -> torch.Tensor:
    """(B, K, P, P) -> (B, K) image-level score of each class: for the seed's loss the patch
    count sum_j z_j its eq. 11 thresholds, for Li et al.'s log p(y = 1 | x) of eq. 2."""
    if loss == "li":
        return log_any_positive(logits.float())
    return torch.sigmoid(logits.float()).sum((-2, -1))


# ---------------------------------------------------------------------------- recipes


def _recipe(stage: str, model: nn.Module, trainable: list[nn.Parameter], cfg: WeakLocStageConfig,
            train_cfg: TrainConfig, inp: StageInputs, epoch_offset: int = 0) -> Recipe:  # fmt: skip
    """The epoch loop shared by both stages: ``model`` maps (B, 1, S, S) to (B, K, P, P)
    logits and carries ``thresholds``; ``trainable`` are the parameters Adam updates."""
    prep = cxr14.Preprocessing(size=train_cfg.image_size, grid=train_cfg.grid)
    df = splits(inp.data, inp.fold, train_cfg.unannotated_fraction)
    images = _image_cache(inp.data, prep)
    train = _train_rows(df, cfg)
    if not train.annotated.any():
        raise ValueError(f"{stage}: fold {inp.fold} leaves no annotated training image")
    val = df.loc[df.role == "val"]
    dataset = GridImages(images, train, prep)
    loader = DataLoader(dataset, batch_size=inp.local_batch(cfg.batch_size), shuffle=True, drop_last=len(train) > cfg.batch_size,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)  # fmt: skip
    val_rows = val.to_dict("records")
    val_loader = DataLoader(GridImages(images, val, prep), batch_size=cfg.batch_size, shuffle=False)
    gamma = _gamma(train_cfg, train)
    thresholds = thresholds_of(model)
    state = {"epoch": 0}

    def loss_of(
        logits: torch.Tensor, labels: torch.Tensor, annotated: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        logits = logits.float()
        if train_cfg.loss == "li":
            return li_loss(logits, labels, annotated, boxes, train_cfg.lambda_ann)
        return relaxed_loss(torch.sigmoid(logits), labels, annotated, boxes, thresholds.get(),
                            train_cfg.lambda_ann, gamma.to(logits.device))  # fmt: skip

    def step(net: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        x, labels, annotated, boxes = (t.to(device, non_blocking=True) for t in batch)
        loss, terms = loss_of(net(to_input(x, prep)), labels, annotated, boxes)
        return {"loss": loss, **terms}

    def fit_thresholds() -> None:
        """The seed's alternation, weights frozen: one pass over the training images, then
        :meth:`FitStatistics.fit` per class. Rank 0 only: DDP broadcasts buffers from rank
        0 at the next forward, so every rank trains with these values."""
        device = next(model.parameters()).device
        stats = FitStatistics.empty()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for x, labels, annotated, boxes in DataLoader(
                dataset, batch_size=cfg.batch_size, shuffle=False
            ):
                z = torch.sigmoid(_logits(model, x.to(device), prep, cfg.amp))
                stats.add(z, labels.to(device), annotated.to(device), boxes.to(device))
        model.train(was_training)
        fitted = stats.fit(
            thresholds.get(),
            gamma.numpy(),
            train_cfg.fit_margin,
            train_cfg.fit_margin_hat,
            train_cfg.grid**2,
        )
        thresholds.set(fitted)

    def epoch_start(epoch: int) -> None:
        state["epoch"] = epoch
        alternate = train_cfg.loss == "seed" and train_cfg.thresholds == "alternate"
        due = epoch > 1 and (epoch - 1) % train_cfg.alternate_every == 0
        if alternate and due and inp.rank == 0:
            fit_thresholds()

    def epoch_end(outputs: list[dict[str, Any]]) -> dict[str, float]:
        out = {
            "loss_ann": float(np.mean([o["loss_ann"] for o in outputs])),
            "loss_un": float(np.mean([o["loss_un"] for o in outputs])),
            # the trial's epoch axis (MLflow step), continuing after the earlier stage's epochs
            "trial/epoch": float(epoch_offset + state["epoch"]),
        }
        if train_cfg.loss == "seed":  # the thresholds in use (means over the classes they apply to)
            box, t = [CLASSES.index(c) for c in BOX_CLASSES], thresholds.get()
            out.update({
                "tau_mean": float(t.tau[box].mean()), "rho_mean": float(t.rho[box].mean()),
                "tau_hat_mean": float(t.tau_hat.mean()), "rho_hat_mean": float(t.rho_hat.mean()),
            })  # fmt: skip
        return out

    evaluate = grid_evaluation(val_loader, val_rows, prep, train_cfg.loss, cfg.loc_threshold, stage, cfg.amp)

    total_epochs = cfg.epochs
    return Recipe(
        stage=stage, model=model, train_loader=loader,
        make_optimizer=lambda m: torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay),
        lr_at=lambda s, total: cfg.lr * cfg.lr_decay ** (s * total_epochs / max(1, total)),
        step=step, epochs=cfg.epochs, evaluate=evaluate, eval_epochs=lambda e: e % cfg.eval_every == 0,
        epoch_end=epoch_end, amp=cfg.amp, epoch_start=epoch_start,
    )  # fmt: skip


def _logits(net: nn.Module, images: torch.Tensor, prep: cxr14.Preprocessing, amp: bool) -> torch.Tensor:
    """(B, 1, S, S) images in [0, 1] -> (B, K, P, P) float32 logits (fp16 autocast on CUDA with ``amp``)."""
    cuda = images.device.type == "cuda"
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp and cuda):
        return net(to_input(images, prep)).float()


GridRecord = tuple[np.ndarray, np.ndarray, np.ndarray]  # detected (K, P, P) bool, score (K,), label (K,)


def grid_evaluation(loader: DataLoader, rows: list[dict[str, Any]], prep: cxr14.Preprocessing,
                    loss: str, threshold: float, stage: str, amp: bool) -> Evaluation:  # fmt: skip
    """§4's evaluation on the validation fold (``loader`` over ``rows``, in order):
    localisation accuracy (IoU / IoR >= T) per box class and their mean, image-level AUC per
    class and their mean. Sharded per image: a record is the image's detected patches
    ``z >= 0.5`` (K, P, P) bool, its (K,) :func:`image_scores` and (K,) labels."""

    def predict(net: nn.Module, device: torch.device, shard: DataLoader) -> list[GridRecord]:
        was_training = net.training
        net.eval()
        out: list[GridRecord] = []
        with torch.no_grad():
            for x, y, _, _ in shard:
                logits = _logits(net, x.to(device), prep, amp)
                detected = (torch.sigmoid(logits) >= 0.5).cpu().numpy()
                scores = image_scores(logits, loss).cpu().numpy()
                out.extend(zip(detected, scores, y.numpy(), strict=True))
        net.train(was_training)
        return out

    def score(records: list[GridRecord]) -> dict[str, float]:
        detected, score, label = (np.stack(column) for column in zip(*records, strict=True))
        # localisation_table thresholds z at 0.5: the 0/1 detections give the same regions
        table = localisation_table(detected.astype(np.float32), [_class_boxes(r, prep.grid) for r in rows], CLASSES, threshold)
        out: dict[str, float] = {}
        for name, acc in table.items():
            out[f"val/loc_acc_iou/{name}"] = acc["acc_iou"]
            out[f"val/loc_acc_ior/{name}"] = acc["acc_ior"]
        out["val/loc_acc_iou"] = float(np.mean([a["acc_iou"] for a in table.values()]))
        out["val/loc_acc_ior"] = float(np.mean([a["acc_ior"] for a in table.values()]))
        out[f"{stage}/val_loc_acc_iou"] = out["val/loc_acc_iou"]
        out[f"{stage}/val_loc_acc_ior"] = out["val/loc_acc_ior"]
        aucs = {}
        for k, name in enumerate(CLASSES):
            auc = roc_auc(score[:, k], label[:, k])
            if not np.isnan(auc):
                aucs[name] = out[f"val/auc/{name}"] = auc
        out["val/auc"] = float(np.mean(list(aucs.values()))) if aucs else float("nan")
        return out

    return loader_evaluation(loader, predict, score)


def train_model(inp: StageInputs) -> PatchGridNet:
    """The ``train`` stage's base model, its backbone started from ``train.weights`` (§4:
    ImageNet, for the seed's model and Li et al.'s alike): the file the sweep driver
    resolved, or outside a sweep the library cache's or the given path's."""
    cfg: TrainConfig = inp.cfg
    return base_model(cfg, inp.weights_file("weights", cfg.arch))


def train_recipe(inp: StageInputs) -> Recipe:
    cfg: TrainConfig = inp.cfg
    model = train_model(inp)
    return _recipe("train", model, list(model.parameters()), cfg, cfg, inp)


def crf_recipe(inp: StageInputs) -> Recipe:
    cfg: CrfConfig = inp.cfg
    train_cfg = TrainConfig.model_validate(inp.stages["train"])
    base = load_trained(base_model(train_cfg), inp.upstreams["train"])
    model = crf_model(cfg, base)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return _recipe("crf", model, trainable, cfg, train_cfg, inp, epoch_offset=train_cfg.epochs)


# ----------------------------------------------------------------------------- sweep


TABLE_SCORES = {"IoU": "val/loc_acc_iou", "IoR": "val/loc_acc_ior"}


def report(trials: pd.DataFrame, out: Path, metric: str) -> list[Path]:
    """The seed's Table 1 on the parent run (``table_1.csv``): per accuracy (IoU, IoR) and
    configuration, the unannotated share, loss, CRF and anti-aliasing, the number of folds,
    then mean ± std over folds of each box class's accuracy (empty where no evaluated fold
    had the class, with its n where fewer folds had it than the mean) and of their mean."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for accuracy, prefix in TABLE_SCORES.items():
        for column in [prefix, *(f"{prefix}/{c}" for c in BOX_CLASSES)]:  # the mean first: its n
            source = "objective" if column == metric else column
            if source not in trials:
                continue
            for r in summarise(trials, source).to_dict("records"):
                first = trials[trials.config_id == r["config_id"]].iloc[0]
                row = rows.setdefault((accuracy, r["config"]), {
                    "accuracy": accuracy, "config": r["config"],
                    "un[%]": 100 * float(first.get("param.stages.train.unannotated_fraction", "nan")),
                    "loss": first.get("param.stages.train.loss"), "crf": first.get("param.stages.crf.enabled"),
                    "antialias": first.get("param.stages.train.antialias"), "folds": r["n"],
                })  # fmt: skip
                cell = r["mean ± std"]
                if 1 < r["n"] < row["folds"]:  # a class that only some evaluated folds had
                    cell += f" (n={r['n']})"
                row[column.removeprefix(prefix).lstrip("/") or "mean"] = cell
    if not rows:
        return []
    columns = ["accuracy", "config", "un[%]", "loss", "crf", "antialias", "folds", *BOX_CLASSES, "mean"]
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: (r["accuracy"] != "IoU", r["un[%]"], r["config"])))
    path = out / "table_1.csv"
    table.reindex(columns=columns).to_csv(path, index=False)
    return [path]


def check(configs: StageConfigs) -> list[tuple[str, str]]:
    """Threshold fitting only means something for the seed's loss."""
    train = configs.of("train", TrainConfig)
    if train.loss == "li" and train.thresholds == "alternate":
        return [
            ("train.thresholds", "Li et al.'s loss has no thresholds to alternate (use loss: seed)")
        ]
    return []


# ------------------------------------------------------------------------- the ledger


PAPER = Paper(
    title="Localization with Limited Annotation for Chest X-rays",
    authors="Eyal Rozenberg, Daniel Freedman, Alex Bronstein",
    venue="A preprint, December 17, 2021",
)

DEPARTURES = (
    Departure(
        "train.arch",
        '§3.1: a preact-ResNet [20] backbone (Li et al.\'s); §4: "We use ResNet-50 as the backbone"',
        "timm's post-activation ResNet-50, ImageNet weights torchvision's ResNet50_Weights.IMAGENET1K_V1; "
        "the grey image is repeated to 3 channels; the feature map is resized to P x P bilinearly",
        "§4 names ResNet-50 with ImageNet pre-training, and the published ImageNet ResNet-50 weights "
        "are post-activation; the seed names no resize mode",
    ),
    Departure(
        "train.antialias",
        '§3.3: Zhang\'s blur "prior to every downsampling part in the network" of the preact-ResNet; '
        "no filter size given",
        "a binomial BlurPool of train.blur_size = 3 taps before every stride-2 step after the stem "
        "(max-pool, each block's strided 3x3 conv, each strided 1x1 shortcut); the 7x7 stem conv "
        "keeps its stride",
        "Zhang's anti-aliased ResNets leave the stem conv strided (pool_only) and use 3-tap filters "
        "among their published ones; BlurPool has no weights, so the ImageNet file still loads",
    ),
    Departure(
        "eq. 12 outside term",
        "eq. 12 prints |b|^-1 ReLU(1^T(I[b̄] ⊙ z) - rho |b|); eq. 9 has |b̄|^-1 ReLU(... - rho |b̄|)",
        "eq. 9's |b̄| scaling in both places (relaxed_loss)",
        "eq. 4 and the text after eq. 5 define rho as the share of b̄ that may fire, and only the "
        "|b̄| scaling keeps both terms in [0, 1] and balanced, the reason §3.2 gives for the scaling",
    ),
    Departure(
        "train.loss: li",
        "§3.1 Issue 2: Li et al. circumvent the underflow of eq. 1's product \"through a series of "
        'unjustified heuristics"',
        "Li et al.'s eqs. 1-3 computed in log space (log-sigmoid and log-softplus sums), without "
        "their rescaling heuristics",
        "the log-space form is exact and finite for every logit (NaN-free gradient over [-60, 60]), "
        "so the heuristics have nothing left to fix",
    ),
    Departure(
        "li_base arm",
        '§4 Experiments: "We compare our results with those of Li et al."; Table 1\'s ref. rows',
        # (the seed does not say whether it retrained Li et al.'s model or copied [3]'s numbers)
        "Li et al.'s model retrained here with the seed's settings (ResNet-50 from ImageNet, P = 20, "
        "512 px, Adam, batch 48, the same folds and unannotated draw), without BlurPool or CRF",
        "arms compared differ only in what is compared (loss, BlurPool, CRF); the reference is "
        "measured on the same folds rather than copied",
    ),
    Departure(
        "train.thresholds",
        '§4: freeze the thresholds and train the weights, then freeze the weights "and find the '
        'optimal thresholds", alternating "until convergence"',
        "every train.alternate_every = 2 epochs of a fixed train.epochs, per class the eq. 12 hinge "
        "terms are minimised exactly under tau = rho + train.fit_margin (0.25) and tau_hat = "
        "rho_hat + train.fit_margin_hat (1 patch), on one pass of the frozen network over the "
        "training images (FitStatistics.fit)",
        "the loss alone is minimised by the degenerate thresholds §4 warns about (tau -> 0, rho -> 1); "
        "the margin keeps the fit off them and makes it a convex 1-D problem; the seed gives no "
        "cadence or convergence test",
    ),
    Departure(
        "train.tau, train.rho, train.tau_hat, train.rho_hat",
        '§3.2: per-class thresholds, "parameters of the network" or hyperparameters; no values given',
        "starting values 0.5, 0.02 (shares of b and b̄), 2 and 1 patches, shared by every class",
        "half the box must fire and at most 2 % of the rest; a positive image needs more than one "
        "patch of evidence (Issue 1), a negative at most one",
    ),
    Departure(
        "train.gamma",
        'eq. 11: "gamma is the ratio of positive to negative examples in the data" (one gamma)',
        "per class k, max(n_pos^k, 1) / n_neg^k over the training images of the fold; 1 for a class "
        "without negatives; a number given in train.gamma applies to every class",
        "y^k and the imbalance are per class; a class without training positives would get gamma 0 "
        "and with it no loss at all (its only terms are gamma-weighted negatives), so it is weighted "
        "as if it had one positive, continuous with n_pos = 1",
    ),
    Departure(
        "train.epochs, crf.epochs",
        '§3.3: the base model is trained "until converges", then the CRF; no epoch counts',
        "30 epochs for train, 10 for crf",
        "the seed gives none",
    ),
    Departure(
        "train.lr_decay",
        '§4: "exponentially decaying learning-rate, initialized to 0.001"; no rate',
        "lr 1e-3 x 0.95 per epoch (stepped per iteration), for each stage",
        "the seed gives no rate",
    ),
    Departure(
        "train.head_channels",
        '§3.1: "two convolutional layers (including batch normalization and ReLU)" to K channels; '
        "no width or kernel sizes",
        "conv 3x3 to 512 channels + BN + ReLU, then conv 1x1 to K = 14",
        "the seed gives none",
    ),
    Departure(
        "crf",
        '§3.3: the PAC-CRF is integrated "and train[ed] end-to-end", then: train the base until it '
        "converges, freeze it and train only the PAC-CRF (19 x 19); Figure 3: the feature branch "
        '"extracts features from the input images"; no mean-field steps or branch width',
        "two stages (train, then crf on the frozen base); the feature branch (two convs, each "
        "followed by ReLU and BN, to K channels) reads the frozen backbone's grid features; "
        "crf.steps = 5 mean-field steps, crf.hidden = 256; the message is averaged over the "
        "window taps; W starts at zero",
        "§3.3's training regime is explicit; with the base frozen its features cost nothing and "
        "are already on the P x P grid; summed over 19 x 19 taps one Adam step would wipe out "
        "the converged unary",
    ),
    Departure(
        "val/loc_acc_ior",
        '§4: IoR ("Intersection-over-Region") is not defined',
        "intersection over the detected region, |D ∩ B| / |D| (0 when nothing is detected)",
        "Li et al.'s definition, whose practice §4 follows (as Wang et al.'s IoBB)",
    ),
    Departure(
        "val/loc_acc_iou (the objective)",
        "Table 1 reports each of the 8 box classes",
        "the mean over the box classes of the fold is the objective; each class is logged as "
        "val/loc_acc_iou/<class> and tabled in table_1.csv",
        "a search needs one number",
    ),
    Departure(
        "data.split (folds)",
        "§4: 5-fold cross validation of the annotated samples",
        "the 5 folds are cut by patient (no patient on both sides)",
        "images of one patient in both train and test folds would leak",
    ),
    Departure(
        "train.unannotated_fraction",
        '§4 setting (b): "20% of the unannotated samples, representing about 20K samples (selected '
        'randomly)"',
        "round(f N) of the N images without a box in one seeded order (nested across f), skipping "
        "patients of the evaluated fold",
        "no patient on both sides of a fold; nested draws make 0 % < 10 % < 20 % comparable",
    ),
    Departure(
        "checkpoint",
        '§4: results on "the remaining 20% of the annotated samples of each fold"; no validation '
        "split or model selection named",
        "each stage's last epoch is kept; the evaluated fold selects nothing",
        "the evaluated fold is the seed's test set: picking an epoch on it would inflate the score",
    ),
)


def seed_design(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Seed 003's own values (§4 "Training Details", §3.3) of this configuration: the seed's
    model for ``train.loss: seed``, Li et al.'s base model (as Table 1's ref.) for ``li``;
    the CRF stage's only where it runs."""
    design: dict[str, Any] = {
        "train.arch": "resnet50",  # §4 "We use ResNet-50 as the backbone"
        "train.weights": "imagenet",  # §4 "initialize the weights based on ImageNet pre-training"
        "train.image_size": 512,  # §4 Dataset: resized to 512 x 512
        "train.grid": 20,  # §4 P = 20
        "train.lambda_ann": 70.0,  # §4
        "train.lr": 1e-3,  # §4 initialized to 0.001
        "train.weight_decay": 0.01,  # §4
        "train.batch_size": 48,  # §4 "We take the batch size to be 48"
        "train.loc_threshold": 0.1,  # §4 T = 0.1
        "train.gamma": None,  # eq. 11: the positive-to-negative ratio of the data
    }
    if configs["train"]["loss"] == "seed":  # the seed's model: BlurPool, alternation, CRF
        design.update(
            {"train.antialias": True, "train.thresholds": "alternate", "crf.enabled": True}
        )
    else:  # Li et al.'s base model: no BlurPool, no CRF
        design.update({"train.antialias": False, "crf.enabled": False})
    if configs["crf"]["enabled"]:
        # §3.3 a 19 x 19 PAC filter; §4's training details hold for the CRF's training too
        design.update(
            {"crf.size": 19, "crf.batch_size": 48, "crf.lr": 1e-3, "crf.weight_decay": 0.01}
        )
        design["crf.loc_threshold"] = 0.1
    return design


def pretrained_needs(configs: dict[str, dict[str, Any]]) -> list[Need]:
    """The base model's ``train.weights`` (the ``crf`` stage starts from the trained base)."""
    train = configs["train"]
    return [] if train["weights"] == NONE else [Need("train.weights", train["arch"])]


_TINY = {"num_workers": 0, "batch_size": 8}
METHOD = Method(
    name="weak_localization",
    seed="003_ed4647cf93637bc5.txt",
    data_format="chestxray14",
    stages={
        "train": StageDef("train", TrainConfig, train_recipe, cacheable=True),
        "crf": StageDef(
            "crf",
            CrfConfig,
            crf_recipe,
            consumes="train",
            cacheable=True,
            skip=lambda cfg: not cfg.enabled,
        ),
    },  # fmt: skip
    monitor="val/loc_acc_iou",
    tiny={
        "train": {
            **_TINY,
            "arch": "resnet18",
            "image_size": 128,
            "grid": 8,
            "head_channels": 64,
            "lr": 3e-3,
            "weights": NONE,  # CPU tests: no ImageNet file of the tiny arch
        },
        "crf": {**_TINY, "size": 7, "steps": 3, "hidden": 32, "feature_channels": 8, "lr": 3e-3},
    },
    # ~20 annotated training images a fold: batch 4 gives a few steps an epoch per DDP worker
    smoke={
        "train": {"epochs": 10, "batch_size": 4, "alternate_every": 3},
        "crf": {"epochs": 2, "batch_size": 4},
    },
    smoke_cases=60,
    check=check,
    prepare_data=prepare_data,
    manifest_hash=manifest_hash,
    baseline={"train.loss": "li"},
    report=report,
    default_folds=cxr14.FOLDS,
    progress_stage="train",
    paper=PAPER,
    departures=DEPARTURES,
    seed_design=seed_design,
    pretrained=pretrained_needs,
    # estimate (the seed reports no times): ResNet-50 at 512 px under AMP trains ~230 images/s
    # on one V100-class GPU; setting (b) has ~23K training images a fold (704 annotated + 20 %
    # of 111,240 unannotated): ~100 s an epoch (setting (a)'s 704 images: ~3 s; declared for
    # (b)). crf: the frozen base's forward only, plus the branch and CRF: ~40 s.
    epoch_seconds={"train": 100.0, "crf": 40.0},
    metrics={
        stage: (
            *(
                f"{stage}/{k}"
                for k in (
                    "loss_ann",
                    "loss_un",
                    "trial/epoch",
                    "val_loc_acc_iou",
                    "val_loc_acc_ior",
                )
            ),
            *(
                f"{stage}/{k}" for k in ("tau_mean", "rho_mean", "tau_hat_mean", "rho_hat_mean")
            ),  # loss: seed
            "val/loc_acc_iou",
            "val/loc_acc_ior",
            "val/auc",
            *(f"val/loc_acc_{score}/{c}" for score in ("iou", "ior") for c in BOX_CLASSES),
            *(f"val/auc/{c}" for c in CLASSES),
        )
        for stage in ("train", "crf")
    },  # fmt: skip
)
