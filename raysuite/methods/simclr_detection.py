"""simclr_detection (seed 000): SimCLR-pretrained ResNet-50 -> Faster R-CNN on VinDr-CXR.

The seed asks how much labelled box data self-supervised pretraining saves. Of the
abnormal VinDr-CXR images (§2.1: "No finding"-only images dropped), split 70/10/20 by
patient, a fraction ``pretrain.fraction`` of the training split moves to an unlabelled
pool (labels discarded); a ResNet-50 is pretrained there with SimCLR (§3.3) and becomes
the body of a Faster R-CNN fine-tuned on the rest (§3.2: SGD lr 0.0002, momentum 0.9,
weight decay 0.0001, batch 2, 12 epochs), with repeat-factor class balancing (§3.1).
``fraction = 0`` is the baseline arm: no pretraining, the whole training split labelled,
from scratch or from a COCO / ImageNet weights file given by path (nothing is downloaded).

Pools are nested (for one ``pool_seed`` the 10 % pool lies inside the 20 % pool) and the
labelled part is stratified by each image's rarest finding (``manifest.labelled_mask``).
Images are 512x512 after histogram equalisation (§2.1, §3.3), served from the manifest's
shard cache; grayscale is repeated to 3 channels and normalised with ImageNet statistics in
both stages, so SimCLR, COCO and ImageNet weights all see the input they were trained on.

Classes: the seed counts 13 findings, but VinDr-CXR publishes 14 (ids 0..13) besides
"No finding"; all 14 are trained (15 outputs with background).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, Dataset

from raysuite.data import manifest
from raysuite.data.cache import ShardCache
from raysuite.data.datasets import ensure_manifest, manifest_path, prepare
from raysuite.data.formats import vindr_cxr
from raysuite.data.rng import ProcessRng
from raysuite.data.sampling import RepeatFactorSampler, repeat_factors
from raysuite.data.simclr_augment import SimCLRAugment
from raysuite.methods.base import Method, StageConfig, StageDef, StageInputs
from raysuite.methods.nn.det_metrics import DetectionEvaluator
from raysuite.methods.nn.optim import decay_groups, warmup_cosine
from raysuite.methods.nn.simclr import ProjectionHead, nt_xent, nt_xent_accuracy
from raysuite.report.curves import label_fraction_curve
from raysuite.train.loop import Evaluation, Recipe, load_state, loader_evaluation

CLASSES = vindr_cxr.CLASSES
NUM_CLASSES = len(CLASSES) + 1  # with background (index 0 in torchvision's detectors)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, per repeated channel
FEATURES = {"resnet50": 2048, "resnet18": 512}


class DetStageConfig(StageConfig):
    arch: Literal["resnet50", "resnet18"] = "resnet50"  # resnet18: the CPU-sized TINY preset
    image_size: int = Field(512, ge=64)  # seed §2.1: every image resized to 512x512
    num_workers: int = Field(4, ge=0)
    amp: bool = True


class PretrainConfig(DetStageConfig):
    """SimCLR (seed §3.3). Optimiser settings are SimCLR's (Chen et al. 2020), the seed is
    silent on them: SGD with momentum (LARS is not in PyTorch), lr 0.3 x batch / 256,
    10 warm-up epochs then cosine, weight decay 1e-6."""

    fraction: float = Field(0.5, ge=0, lt=1)  # of the training split moved to the unlabelled pool
    pool_seed: int = 0  # which nested draw of pools
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=2)  # global; negatives are gathered across workers
    lr: float | None = Field(None, gt=0)  # default 0.3 * batch_size / 256
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-6, ge=0)
    warmup_epochs: int = Field(10, ge=0)
    temperature: float = Field(0.1, gt=0)
    proj_hidden: int = Field(2048, ge=8)
    proj_dim: int = Field(128, ge=2)
    crop_size: int = Field(224, ge=32)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = Field(21, ge=3)
    noise_fraction: tuple[float, float] = (0.125, 0.25)  # noise sigma / image mean


class FinetuneConfig(DetStageConfig):
    """Faster R-CNN, ResNet FPN backbone (seed §3.2)."""

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(2, ge=1)  # global (seed §3.2: "a batch size of 2"), split over workers
    lr: float = Field(2e-4, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from lr/1000 (torchvision's reference)
    repeat_threshold: float = Field(0.4, gt=0, le=1)  # t of seed §3.1
    frozen_bn: bool = True  # FrozenBatchNorm2d with loaded weights; a scratch body trains BN
    trainable_layers: int = Field(3, ge=0, le=5)  # backbone stages trained (loaded weights only)
    weights: str | None = None  # COCO detector or ImageNet ResNet state dict (baseline arm)
    rpn_batch_size_per_image: int = Field(256, ge=8)  # torchvision's defaults
    box_batch_size_per_image: int = Field(512, ge=8)
    eval_every: int = Field(1, ge=1)
    patience: int | None = Field(None, ge=1)
    max_train_images: int | None = Field(None, ge=1)  # smoke runs


# ------------------------------------------------------------------------------ data


def prepare_data(data: dict[str, Any]) -> None:
    """Synthesise a VinDr-CXR layout when the root is absent (and allowed), then ingest."""
    prepare(data, lambda root: (root / "train").is_dir(), default_cases=40)


def _pretrain_settings(stages: dict[str, dict[str, Any]]) -> tuple[float, int]:
    pre = stages.get("pretrain") or {}
    return float(pre.get("fraction", 0.0)), int(pre.get("pool_seed", 0))


def splits(data: dict[str, Any], fraction: float, pool_seed: int) -> pd.DataFrame:
    """Abnormal images of the training source split, re-split 70/10/20 by patient with the
    spec's ``data.split`` (seed §2.1), the training part divided into ``finetune`` (labelled)
    and ``pool`` (unlabelled: pretraining) with ``fraction`` in the pool. Column ``role``."""
    df, _ = ensure_manifest(data)
    df = df[vindr_cxr.abnormal(df) & (df.source_split != "test")].reset_index(drop=True)
    split = data.get("split") or {}
    df = manifest.assign_splits(df, tuple(split.get("ratios", (0.7, 0.1, 0.2))), split.get("seed", 0))
    role = df.split.map({"val": "val", "test": "test", "train": "finetune"})
    train = df.split == "train"
    labelled = manifest.labelled_mask(df[train].reset_index(drop=True), 1.0 - fraction, seed=pool_seed)
    role.iloc[np.flatnonzero(train.to_numpy())[~labelled]] = "pool"
    return df.assign(role=role)


def manifest_hash(data: dict[str, Any], stage: str, cfg: Any) -> str:
    """The manifest's content hash with this stage's images and their preprocessing."""
    _, meta = ensure_manifest(data)
    fraction, pool_seed = (cfg.fraction, cfg.pool_seed) if stage == "pretrain" else (0.0, 0)
    df = splits(data, fraction, pool_seed)
    rows = df[df.role == "pool"] if stage == "pretrain" else df
    blob = meta["hash"] + rows[["sample_id", "role"]].to_csv(index=False) + _prep(cfg).key()
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _prep(cfg: DetStageConfig) -> vindr_cxr.Preprocessing:
    return vindr_cxr.Preprocessing(size=cfg.image_size)


def image_cache(data: dict[str, Any], cfg: DetStageConfig) -> ShardCache:
    """Preprocessed (image_size, image_size) images of the whole manifest, memory-mapped."""
    df, meta = ensure_manifest(data)
    rows = {r["sample_id"]: r for r in df.to_dict("records")}
    prep = _prep(cfg)
    root = Path(data["root"])
    return ShardCache(
        manifest_path(data), meta["hash"], prep.key(), list(rows),
        _Loader(root, rows, prep), shard_size=64,
    )  # fmt: skip


class _Loader:
    """Picklable ``sample_id -> preprocessed image`` for the shard cache."""

    def __init__(self, root: Path, rows: dict[str, dict[str, Any]], prep: vindr_cxr.Preprocessing):
        self.root, self.rows, self.prep = root, rows, prep

    def __call__(self, sample_id: str) -> np.ndarray:
        return vindr_cxr.preprocess(self.root, self.rows[sample_id], self.prep)


def _to_input(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1] -> (3, H, W) grayscale repeated (normalised later, per stage)."""
    x = torch.as_tensor(np.asarray(image, np.float32))
    return x[None].expand(3, *x.shape).contiguous()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> ImageNet-normalised, as GeneralizedRCNNTransform does in fine-tuning."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class TwoViews(Dataset):
    """Unlabelled pool images -> two SimCLR views, each (1, S, S) in [0, 1]."""

    def __init__(self, cache: ShardCache, ids: list[str], augment: SimCLRAugment):
        self.cache, self.ids, self.augment, self.rng = cache, ids, augment, ProcessRng()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.cache[self.ids[i]])[None]
        gen = self.rng.torch()
        return self.augment(image, gen), self.augment(image, gen)


class BoxImages(Dataset):
    """Labelled images -> ((3, S, S) in [0, 1], {"boxes": (N, 4), "labels": (N,) 1..14})."""

    def __init__(self, cache: ShardCache, rows: pd.DataFrame, size: int):
        self.cache, self.size = cache, size
        self.rows = rows.to_dict("records")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        row = self.rows[i]
        boxes, labels = vindr_cxr.scaled_boxes(row, self.size)
        target = {"boxes": torch.from_numpy(boxes).float(), "labels": torch.from_numpy(labels + 1)}
        return _to_input(self.cache[row["sample_id"]]), target


def _collate(batch: list[Any]) -> tuple[list[Any], list[Any]]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


# ---------------------------------------------------------------------------- models


def resnet(arch: str, norm_layer: Callable[..., nn.Module] | None = None) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, arch)(weights=None, **({"norm_layer": norm_layer} if norm_layer else {}))


class SimCLRNet(nn.Module):
    """ResNet encoder (fc removed) -> projection head g. (B, 3, S, S) -> (B, proj_dim)."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.encoder = resnet(cfg.arch)
        self.encoder.fc = nn.Identity()
        self.head = ProjectionHead(FEATURES[cfg.arch], cfg.proj_hidden, cfg.proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(_normalise(x)))


def detector(cfg: FinetuneConfig, loaded: bool) -> nn.Module:
    """torchvision Faster R-CNN with a ResNet FPN backbone, inputs resized to nothing (the
    images are already ``image_size``). With ``loaded`` weights, BN is frozen (if asked) and
    only ``trainable_layers`` stages train; a scratch body trains every layer and its BN."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    norm = FrozenBatchNorm2d if (loaded and cfg.frozen_bn) else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(
        backbone_name=cfg.arch, weights=None, norm_layer=norm,
        trainable_layers=cfg.trainable_layers if loaded else 5,
    )  # fmt: skip
    return FasterRCNN(
        backbone, num_classes=NUM_CLASSES, min_size=cfg.image_size, max_size=cfg.image_size,
        image_mean=list(MEAN), image_std=list(STD), rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
    )  # fmt: skip


def load_simclr_backbone(model: nn.Module, checkpoint_dir: Path) -> None:
    """Load the SimCLR encoder into ``model.backbone.body``: strict on every backbone key
    (nothing missing); the projection head is dropped."""
    state = load_state(checkpoint_dir)["model"]
    encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    result = model.backbone.body.load_state_dict(encoder, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result


def load_weights_file(model: nn.Module, path: str) -> None:
    """A COCO Faster R-CNN state dict (``backbone.body.*`` keys: everything loads but the
    class-specific box predictor) or an ImageNet ResNet (``layer1.*`` keys: the body, fc
    dropped). Refuses a file that would leave backbone keys missing."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    if any(k.startswith("backbone.body.") for k in state):
        own = model.state_dict()
        keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k.startswith("backbone.") and k not in keep and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"{path}: detector weights lack backbone keys, e.g. {missing[:3]}")
        model.load_state_dict(keep, strict=False)
    elif "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        body = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = model.backbone.body.load_state_dict(body, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"{path}: ResNet weights lack keys, e.g. {missing[:3]}")
    else:
        raise ValueError(f"{path}: neither a Faster R-CNN (backbone.body.*) nor a ResNet (layer1.*) state dict")


# ---------------------------------------------------------------------------- recipes


def _throughput(world_size: int) -> Callable[[list[dict[str, Any]]], dict[str, float]]:
    """epoch_end adding images/s over all workers (time between epoch ends; the first epoch
    includes start-up)."""
    last = [time.perf_counter()]

    def epoch_end(outputs: list[dict[str, Any]]) -> dict[str, float]:
        now = time.perf_counter()
        rate = sum(o["images"] for o in outputs) / max(now - last[0], 1e-9) * world_size
        last[0] = now
        extras = {k: float(np.mean([o[k] for o in outputs])) for k in outputs[0] if k not in ("loss", "images")}
        return {**extras, "images_per_s": rate}

    return epoch_end


def pretrain_recipe(inp: StageInputs) -> Recipe:
    cfg: PretrainConfig = inp.cfg
    df = splits(inp.data, cfg.fraction, cfg.pool_seed)
    pool = df[df.role == "pool"].sample_id.tolist()
    # A pool smaller than a batch (tiny or smoke datasets) trains on batches of the pool size.
    per_worker = min(inp.local_batch(cfg.batch_size, minimum=2), len(pool) // inp.world_size)
    if per_worker < 2:
        raise ValueError(f"pretrain: {len(pool)} pool images at fraction {cfg.fraction}: SimCLR needs 2 per worker")
    augment = SimCLRAugment(
        size=cfg.crop_size, scale=cfg.crop_scale, blur_sigma=cfg.blur_sigma,
        blur_kernel=cfg.blur_kernel, noise_frac=cfg.noise_fraction,
    )  # fmt: skip
    loader = DataLoader(
        TwoViews(image_cache(inp.data, cfg), pool, augment), batch_size=per_worker, shuffle=True,
        drop_last=True, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
    )  # fmt: skip
    lr = cfg.lr or 0.3 * cfg.batch_size / 256

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(decay_groups([module], cfg.weight_decay), lr=lr, momentum=cfg.momentum)

    def lr_at(step: int, total: int) -> float:
        return warmup_cosine(step, total, cfg.warmup_epochs * max(1, total // cfg.epochs), lr, 0.0)

    def step(net: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        v1, v2 = (v.to(device, non_blocking=True).expand(-1, 3, -1, -1) for v in batch)
        z = net(torch.cat([v1, v2]))
        z1, z2 = z.chunk(2)
        return {"loss": nt_xent(z1, z2, cfg.temperature), "top1": nt_xent_accuracy(z1, z2), "images": len(v1)}

    return Recipe(
        stage="pretrain", model=SimCLRNet(cfg), train_loader=loader, make_optimizer=make_optimizer,
        lr_at=lr_at, step=step, epochs=cfg.epochs, epoch_end=_throughput(inp.world_size), amp=cfg.amp,
    )  # fmt: skip


# one image: predicted boxes (D, 4), scores (D,), class indices (D,); GT boxes (G, 4), class indices (G,)
Detections = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _evaluator(loader: DataLoader, prefix: str, per_class: bool, amp: bool) -> Evaluation:
    """VOC mAP at IoU > 0.4 and 0.5 (per class at 0.4 with ``per_class``) over ``loader``,
    sharded per image: a record is the image's :data:`Detections` (0-based classes)."""

    @torch.no_grad()
    def predict(net: nn.Module, device: torch.device, shard: DataLoader) -> list[Detections]:
        was_training = net.training
        net.eval()
        records: list[Detections] = []
        for images, targets in shard:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                outputs = net([im.to(device) for im in images])
            for out, tgt in zip(outputs, targets, strict=True):
                records.append((
                    out["boxes"].float().cpu().numpy(), out["scores"].float().cpu().numpy(),
                    (out["labels"].cpu() - 1).numpy(), tgt["boxes"].numpy(), (tgt["labels"] - 1).numpy(),
                ))  # fmt: skip
        net.train(was_training)
        return records

    def score(records: list[Detections]) -> dict[str, float]:
        ev = DetectionEvaluator(len(CLASSES), (0.4, 0.5))
        for record in records:  # in the loader's order: ties in score rank by it
            ev.add(*record)
        result = ev.compute()
        metrics = {f"{prefix}/map40": result["map40"], f"{prefix}/map50": result["map50"]}
        if per_class:
            for key, value in result.items():
                if key.startswith("ap40/"):
                    metrics[f"{prefix}/ap40/{CLASSES[int(key[5:])]}"] = value
        return metrics

    return loader_evaluation(loader, predict, score)


def finetune_recipe(inp: StageInputs) -> Recipe:
    cfg: FinetuneConfig = inp.cfg
    fraction, pool_seed = _pretrain_settings(inp.stages)
    df = splits(inp.data, fraction, pool_seed)
    train = df[df.role == "finetune"]
    if cfg.max_train_images:
        train = train.head(cfg.max_train_images)
    cache = image_cache(inp.data, cfg)
    factors = repeat_factors([[b["label"] for b in boxes] for boxes in train.boxes], cfg.repeat_threshold)
    sampler = RepeatFactorSampler(factors, num_replicas=inp.world_size, rank=inp.rank, seed=inp.seed)
    loader = DataLoader(
        BoxImages(cache, train, cfg.image_size), batch_size=inp.local_batch(cfg.batch_size), sampler=sampler,
        collate_fn=_collate, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
    )  # fmt: skip

    def eval_loader(role: str) -> DataLoader:
        return DataLoader(BoxImages(cache, df[df.role == role], cfg.image_size), batch_size=4, collate_fn=_collate, num_workers=0)

    loaded = inp.upstream is not None or cfg.weights is not None
    model = detector(cfg, loaded)
    if inp.upstream is not None:
        load_simclr_backbone(model, inp.upstream)
    elif cfg.weights is not None:
        load_weights_file(model, cfg.weights)

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def step(net: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        images, targets = batch
        losses = net([im.to(device, non_blocking=True) for im in images], [{k: v.to(device) for k, v in t.items()} for t in targets])
        return {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}, "images": len(images)}

    return Recipe(
        stage="finetune", model=model, train_loader=loader, make_optimizer=make_optimizer,
        lr_at=lambda s, total: cfg.lr * _warmup(s, cfg.warmup_steps), step=step, epochs=cfg.epochs,
        evaluate=_evaluator(eval_loader("val"), "val", False, cfg.amp),
        eval_epochs=lambda e: e % cfg.eval_every == 0, monitor="val/map40", mode="max",
        patience=cfg.patience, epoch_end=_throughput(inp.world_size), amp=cfg.amp,
        test=_evaluator(eval_loader("test"), "test", True, cfg.amp),
    )  # fmt: skip


def report(trials: pd.DataFrame, out: Path, metric: str) -> list[Path]:
    """The seed's label-fraction curve on the sweep's parent run."""
    path = label_fraction_curve(trials, "stages.pretrain.fraction", metric, out)
    return [path] if path is not None else []


def _warmup(step: int, steps: int) -> float:
    """Linear warm-up factor from 1/1000 to 1 over ``steps`` (torchvision detection reference)."""
    if step >= steps:
        return 1.0
    return 1e-3 + (1 - 1e-3) * step / steps


def check(configs: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The fine-tuned backbone must be the pretrained one's architecture and size."""
    pre, fine = configs["pretrain"], configs["finetune"]
    errors = []
    if pre["fraction"] > 0 and pre["arch"] != fine["arch"]:
        errors.append(("finetune.arch", f"{fine['arch']} differs from pretrain.arch {pre['arch']}"))
    if pre["fraction"] > 0 and fine["weights"]:
        errors.append(("finetune.weights", "a weights file is for the baseline arm (pretrain.fraction: 0)"))
    return errors


_TINY = {"arch": "resnet18", "image_size": 128, "num_workers": 0}
METHOD = Method(
    name="simclr_detection",
    seed="000_f6ba6e367380d2c1.txt",
    data_format="vindr_cxr",
    stages={
        "pretrain": StageDef("pretrain", PretrainConfig, pretrain_recipe, cacheable=True,
                             skip=lambda cfg: cfg["fraction"] == 0),
        "finetune": StageDef("finetune", FinetuneConfig, finetune_recipe, consumes="pretrain"),
    },  # fmt: skip
    monitor="val/map40",
    tiny={
        "pretrain": {**_TINY, "crop_size": 64, "batch_size": 16, "proj_hidden": 128, "proj_dim": 32, "blur_kernel": 9},
        "finetune": {**_TINY, "batch_size": 4, "lr": 0.005, "warmup_steps": 10, "frozen_bn": False,
                     "rpn_batch_size_per_image": 64,
                     "box_batch_size_per_image": 64},
    },
    smoke={
        "pretrain": {"epochs": 1, "warmup_epochs": 0},
        "finetune": {"epochs": 2},
    },
    smoke_cases=60,
    check=check,
    prepare_data=prepare_data,
    manifest_hash=manifest_hash,
    baseline={"pretrain.fraction": 0.0},
    report=report,
    metrics={
        "pretrain": ("pretrain/top1", "pretrain/images_per_s"),
        "finetune": (
            *(f"finetune/{k}" for k in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "images_per_s")),
            "val/map40", "val/map50", "val/map40_best", "test/map40", "test/map50",
            *(f"test/ap40/{c}" for c in CLASSES),
        ),
    },  # fmt: skip
)
