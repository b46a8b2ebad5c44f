"""Method ``iou_simsiam_seg`` (seed 001_a6906726c99d77f3, "IoU-based positives").

Stage ``pretrain``: SimSiam (eq. 4.1) on unlabelled 2-D CT slices with two 96x96 crops
whose IoU lies in ``iou_interval`` (Algorithm 1, r1=30, r2=4), per-crop augmentations of
§4.5, the Swin transformer encoder of a 2-D Swin UNETR (C=48, window 7, depths 2,2,2,2,
heads 3,6,12,24, drop path 0.1), SGD momentum 0.9, lr 0.025 cosine to 1e-6 (no decay on the
predictor), wd 1e-5 not on norms/biases, batch 128, 100 epochs, collapse coefficient
(eq. 4.3) on the predictor output each epoch. ``iou_interval: null`` skips the stage (the
scratch baseline); ``[0, 1]`` is plain random cropping.

Stage ``finetune``: 2-D Swin UNETR on 13 FLARE22 organs, encoder loaded strictly from the
pretraining, DiceCE loss, AdamW with 10-epoch warm-up to 1e-3 and cosine to 5e-5, wd 1e-5
not on norms/biases, batch 32 images x 2 crops (organ-centred with p=0.5), evaluation every
10 epochs and every epoch from epoch 90, early stop after 20 epochs without improvement,
sliding-window inference (roi 96, overlap 0.25), ``val/dice`` (eq. 4.2 per slice, background
included, mean over slices; ``val/dice_organs`` leaves background out).

Every place this departs from the seed is in :data:`DEPARTURES` (``raysuite plan`` and the
report list them); :func:`seed_design` gives the seed's own values of the config keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from raysuite.data import augment
from raysuite.data.cache import SliceCache, default_cache_dir
from raysuite.data.crops import sample_pair
from raysuite.data.datasets import ensure_manifest, prepare
from raysuite.data.formats import flare22
from raysuite.data.rng import ProcessRng
from raysuite.methods.base import (
    Method,
    OptimConfig,
    StageConfigs,
    StageDef,
    StageInputs,
)
from raysuite.methods.ledger import Departure, Paper
from raysuite.methods.nn.seg_metrics import dice_per_slice, slice_mean_dice
from raysuite.methods.nn.simsiam import (
    PredictionMLP,
    ProjectionMLP,
    collapse_coefficient,
    simsiam_loss,
)
from raysuite.train.loop import Evaluation, Recipe, load_state
from raysuite.train.optim import decay_groups, warmup_cosine

if TYPE_CHECKING:
    from monai.networks.nets.swin_unetr import SwinUNETR

PREP = flare22.Preprocessing()


class SwinStageConfig(OptimConfig):
    """Fields shared by both stages: the 2-D Swin UNETR shape and loader/precision knobs."""

    feature_size: int = Field(48, ge=12)
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (3, 6, 12, 24)
    window_size: int = 7
    drop_path: float = Field(0.0, ge=0, lt=1)
    num_workers: int = Field(4, ge=0)  # DataLoader processes per training worker
    amp: bool = True  # mixed precision on GPU (the seed ran everything under AMP)

    @field_validator("feature_size")
    @classmethod
    def _div12(cls, v: int) -> int:
        if v % 12:
            raise ValueError("Swin UNETR needs feature_size divisible by 12")
        return v


class PretrainConfig(SwinStageConfig):
    iou_interval: tuple[float, float] | None = (0.3, 0.6)
    iou_min: float | None = Field(None, ge=0, le=1)  # alternative parameterisation for search:
    iou_width: float | None = Field(None, gt=0, le=1)  # interval = [iou_min, min(1, iou_min + width)]
    r1: int = Field(30, ge=1)
    r2: int = Field(4, ge=1)
    crop_size: int = Field(96, ge=32)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(0.025, gt=0)
    final_lr: float = Field(1e-6, ge=0)
    momentum: float = 0.9
    weight_decay: float = Field(1e-5, ge=0)
    proj_dim: int = Field(2048, ge=8)
    pred_dim: int = Field(512, ge=4)
    drop_path: float = Field(0.1, ge=0, lt=1)
    max_slices_per_epoch: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _interval(self) -> PretrainConfig:
        if (self.iou_min is None) != (self.iou_width is None):
            raise ValueError("iou_min and iou_width go together")
        if self.iou_min is not None and self.iou_width is not None:
            self.iou_interval = (self.iou_min, min(1.0, self.iou_min + self.iou_width))
            self.iou_min = self.iou_width = None
        if self.iou_interval is not None:
            lo, hi = self.iou_interval
            if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
                raise ValueError(f"iou_interval {list(self.iou_interval)} must lie in [0, 1]")
            if lo > hi:
                raise ValueError(f"iou_interval {list(self.iou_interval)}: i_min > i_max")
        if self.crop_size % 32:
            raise ValueError("crop_size must be a multiple of 32 (Swin UNETR downsamples 32x)")
        return self


class FinetuneConfig(SwinStageConfig):
    epochs: int = Field(225, ge=1)
    batch_size: int = Field(32, ge=1)
    crops_per_image: int = Field(2, ge=1)
    pos_fraction: float = Field(0.5, ge=0, le=1)
    crop_size: int = Field(96, ge=32)
    lr: float = Field(1e-3, gt=0)
    final_lr: float = Field(5e-5, ge=0)
    warmup_epochs: int = Field(10, ge=0)
    weight_decay: float = Field(1e-5, ge=0)
    labelled_cases: int = Field(15, ge=1)
    val_cases: int = Field(35, ge=1)
    split_seed: int = 0
    eval_every: int = Field(10, ge=1)
    eval_every_epoch_from: int = Field(90, ge=1)
    patience: int | None = Field(20, ge=1)
    sw_overlap: float = Field(0.25, ge=0, lt=1)
    sw_batch_size: int = Field(8, ge=1)


# ------------------------------------------------------------------------------ data


def prepare_data(data: dict[str, Any]) -> None:
    """Synthesise a FLARE22 layout when the root is absent (and allowed), then ingest."""
    prepare(data, lambda root: any(root.rglob("*_0000.nii.gz")), default_cases=20)


def _cases(data: dict[str, Any], cfg: FinetuneConfig | None) -> Any:
    df, _ = ensure_manifest(data)
    cases = flare22.cases_from_manifest(df, data["root"])
    if cfg is None:
        return cases
    return flare22.split_cases(cases, cfg.labelled_cases, cfg.val_cases, cfg.split_seed)


def manifest_hash(data: dict[str, Any], stage: str, cfg: Any) -> str:
    """Hash of the manifest's content, this stage's cases and split, and the preprocessing."""
    _, meta = ensure_manifest(data)
    cases = _cases(data, cfg if stage == "finetune" else None)
    if stage == "pretrain":
        cases = cases[~cases.labelled]
    cols = [c for c in ("case_id", "labelled", "split") if c in cases]
    blob = meta["hash"] + cases[cols].to_csv(index=False) + PREP.key()
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _slice_cache(data: dict[str, Any]) -> SliceCache:
    return SliceCache(data.get("cache_dir") or default_cache_dir(), "flare22", PREP.key())


def _load_cases(data: dict[str, Any], rows: Any) -> list[tuple[np.ndarray, np.ndarray | None]]:
    cache = _slice_cache(data)
    out = []
    for row in rows.itertuples():
        label = row.label if row.labelled else None
        out.append(cache.get(row.image, label, lambda i, lab: flare22.preprocess(i, lab, PREP)))
    return out


def _labelled_cases(data: dict[str, Any], rows: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_load_cases` of train or val ``rows``: labelled cases only (split_cases)."""
    cases = _load_cases(data, rows)
    assert all(seg is not None for _, seg in cases), "train/val cases are labelled"
    return cast("list[tuple[np.ndarray, np.ndarray]]", cases)


class PairDataset(Dataset):
    """Unlabelled slices -> two augmented IoU-constrained crops.

    Item: ``(view1 (1, S, S), view2 (1, S, S), fallback (bool tensor))``.
    """

    def __init__(self, volumes: list[np.ndarray], cfg: PretrainConfig):
        self.index = [(v, z) for v, vol in enumerate(volumes) for z in range(vol.shape[0])]
        self.volumes, self.cfg, self.rng = volumes, cfg, ProcessRng()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v, z = self.index[i]
        image = self.volumes[v][z]
        s, npr = self.cfg.crop_size, self.rng.numpy()
        h, w = image.shape
        if h < s or w < s:
            image = np.pad(image, ((0, max(0, s - h)), (0, max(0, s - w))))
            h, w = image.shape
        interval = self.cfg.iou_interval
        assert interval is not None  # iou_interval: null skips the pretraining stage
        pair = sample_pair(h, w, s, (interval[0], interval[1]), npr, self.cfg.r1, self.cfg.r2)
        views = []
        for top, left in (pair.first, pair.second):
            crop = torch.from_numpy(np.asarray(image[top : top + s, left : left + s], dtype=np.float32))[None]
            views.append(augment.augment(crop, npr, augment.PRETRAIN)[0])
        return views[0], views[1], torch.tensor(pair.fallback)


class LabelledCropDataset(Dataset):
    """Labelled slices -> ``crops_per_image`` crops centred on an organ with ``pos_fraction``.

    Item: ``(images (K, 1, S, S), labels (K, S, S) int64)``.
    """

    def __init__(self, cases: list[tuple[np.ndarray, np.ndarray]], cfg: FinetuneConfig):
        self.cases, self.cfg, self.rng = cases, cfg, ProcessRng()
        self.index = [(c, z) for c, (img, _) in enumerate(cases) for z in range(img.shape[0])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, z = self.index[i]
        img, seg = self.cases[c]
        image, label = np.asarray(img[z], np.float32), np.asarray(seg[z], np.int64)
        s, npr = self.cfg.crop_size, self.rng.numpy()
        pad = ((0, max(0, s - image.shape[0])), (0, max(0, s - image.shape[1])))
        image, label = np.pad(image, pad), np.pad(label, pad)
        h, w = image.shape
        images, labels = [], []
        for _ in range(self.cfg.crops_per_image):
            pool = np.argwhere(label > 0) if npr.random() < self.cfg.pos_fraction else np.argwhere(label == 0)
            cy, cx = pool[npr.integers(len(pool))] if len(pool) else (h // 2, w // 2)
            top = int(np.clip(cy - s // 2, 0, h - s))
            left = int(np.clip(cx - s // 2, 0, w - s))
            x = torch.from_numpy(image[top : top + s, left : left + s].copy())[None]
            y = torch.from_numpy(label[top : top + s, left : left + s].copy())
            x, y = augment.augment(x, npr, augment.FINETUNE, y)
            images.append(x)
            labels.append(y)
        return torch.stack(images), torch.stack(labels)


def _stack_crops(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([b[0] for b in batch]), torch.cat([b[1] for b in batch])


# --------------------------------------------------------------------------- models


def swin_unetr(cfg: SwinStageConfig, out_channels: int) -> SwinUNETR:
    from monai.networks.nets.swin_unetr import SwinUNETR

    return SwinUNETR(
        in_channels=1,
        out_channels=out_channels,
        feature_size=cfg.feature_size,
        depths=cfg.depths,
        num_heads=cfg.num_heads,
        window_size=cfg.window_size,
        dropout_path_rate=cfg.drop_path,
        spatial_dims=2,
    )


class SimSiamSwin(nn.Module):
    """Swin encoder -> global average pool -> projector f -> predictor h.

    forward: (B, 1, S, S) x2 -> (p1, p2, z1, z2), each (B, proj_dim).
    """

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.encoder = swin_unetr(cfg, out_channels=1).swinViT
        self.projector = ProjectionMLP(16 * cfg.feature_size, cfg.proj_dim)
        self.predictor = PredictionMLP(cfg.proj_dim, cfg.pred_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x, True)[-1].mean(dim=(2, 3)))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z1, z2 = self.embed(x1), self.embed(x2)
        return self.predictor(z1), self.predictor(z2), z1, z2


def load_encoder(model: SwinUNETR, checkpoint_dir: Path) -> None:
    """Load the pretrained encoder into ``model.swinViT`` strictly (no missing keys)."""
    state = load_state(checkpoint_dir)["model"]
    encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    result = model.swinViT.load_state_dict(encoder, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result


# ---------------------------------------------------------------------------- recipes


def pretrain_recipe(inp: StageInputs) -> Recipe:
    cfg: PretrainConfig = inp.cfg
    cases = _cases(inp.data, None)
    rows = cases[~cases.labelled]
    if rows.empty:
        raise ValueError(f"{inp.data['root']}: no unlabelled cases to pretrain on")
    volumes = [img for img, _ in _load_cases(inp.data, rows)]
    dataset = PairDataset(volumes, cfg)
    per_worker = inp.local_batch(cfg.batch_size, minimum=2)  # BatchNorm in the heads: 2 per worker
    sampler = None  # the cap is per epoch over all workers; the runtime splits it per rank
    if cfg.max_slices_per_epoch:
        sampler = torch.utils.data.RandomSampler(dataset, num_samples=min(len(dataset), cfg.max_slices_per_epoch))
    loader = DataLoader(
        dataset, batch_size=per_worker, shuffle=sampler is None, sampler=sampler, drop_last=True,
        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
    )  # fmt: skip
    model = SimSiamSwin(cfg)

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        # Seed §4.5: no weight decay on BN/bias; cosine decay not applied to the predictor.
        assert isinstance(module, SimSiamSwin)  # the loop hands back the recipe's model
        groups = decay_groups([module.encoder, module.projector], cfg.weight_decay)
        groups += decay_groups([module.predictor], cfg.weight_decay, fixed_lr=True)
        for group in groups:
            group["lr"] = cfg.lr
        return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum)

    def step(net: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        x1, x2, fallback = batch
        p1, p2, z1, z2 = net(x1.to(device, non_blocking=True), x2.to(device, non_blocking=True))
        return {
            "loss": simsiam_loss(p1, p2, z1, z2),
            "collapse": collapse_coefficient(p1),
            "fallback": float(fallback.float().mean()),
        }

    def epoch_end(outputs: list[dict[str, Any]]) -> dict[str, float]:
        return {
            "collapse": float(np.mean([o["collapse"] for o in outputs])),
            "iou_fallback_rate": float(np.mean([o["fallback"] for o in outputs])),
        }

    return Recipe(
        stage="pretrain", model=model, train_loader=loader, make_optimizer=make_optimizer,
        lr_at=lambda s, total: warmup_cosine(s, total, 0, cfg.lr, cfg.final_lr),
        step=step, epochs=cfg.epochs, epoch_end=epoch_end, amp=cfg.amp,
    )  # fmt: skip


def finetune_recipe(inp: StageInputs) -> Recipe:
    from monai.inferers.utils import sliding_window_inference
    from monai.losses.dice import DiceCELoss

    cfg: FinetuneConfig = inp.cfg
    cases = _cases(inp.data, cfg)
    train = _labelled_cases(inp.data, cases[cases.split == "train"])
    val = _labelled_cases(inp.data, cases[cases.split == "val"])
    loader = DataLoader(
        LabelledCropDataset(train, cfg), batch_size=inp.local_batch(cfg.batch_size), shuffle=True,
        drop_last=False, num_workers=cfg.num_workers, collate_fn=_stack_crops, persistent_workers=cfg.num_workers > 0,
    )  # fmt: skip
    model = swin_unetr(cfg, flare22.NUM_CLASSES)
    if inp.upstream is not None:
        load_encoder(model, inp.upstream)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(decay_groups([module], cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))

    def lr_at(step: int, total: int) -> float:
        warmup = cfg.warmup_epochs * max(1, total // cfg.epochs)
        return warmup_cosine(step, total, warmup, cfg.lr, cfg.final_lr)

    def step(net: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        x, y = batch
        logits = net(x.to(device, non_blocking=True))
        return {"loss": loss_fn(logits, y.to(device)[:, None])}

    @torch.no_grad()
    def predict(net: nn.Module, device: torch.device, shard: Sequence[int]) -> list[torch.Tensor]:
        """Sliding-window inference on the validation cases ``shard`` (indices into ``val``),
        16 slices at a time: per case its (Z, NUM_CLASSES) float64 dice array
        (:func:`dice_per_slice`, NaN where a class is absent from the slice's label)."""
        was_training = net.training
        net.eval()
        out = []
        for c in shard:
            img, seg = val[c]
            dice = []
            for z0 in range(0, img.shape[0], 16):
                x = torch.from_numpy(np.asarray(img[z0 : z0 + 16], np.float32))[:, None].to(device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=cfg.amp and device.type == "cuda"):
                    logits = sliding_window_inference(
                        x, cfg.crop_size, cfg.sw_batch_size, net, overlap=cfg.sw_overlap
                    )
                assert isinstance(logits, torch.Tensor)  # net returns one tensor, so does the window
                pred = logits.argmax(1).cpu()
                truth = torch.from_numpy(np.asarray(seg[z0 : z0 + 16], np.int64))
                dice.append(dice_per_slice(pred, truth, flare22.NUM_CLASSES))
            out.append(torch.cat(dice))
        net.train(was_training)
        return out

    evaluate = Evaluation(range(len(val)), predict, score_dice)

    return Recipe(
        stage="finetune", model=model, train_loader=loader, make_optimizer=make_optimizer, lr_at=lr_at,
        step=step, epochs=cfg.epochs, evaluate=evaluate,
        eval_epochs=lambda e: e % cfg.eval_every == 0 or e >= cfg.eval_every_epoch_from,
        monitor="val/dice", mode="max", patience=cfg.patience, amp=cfg.amp,
    )  # fmt: skip


def score_dice(dice: list[torch.Tensor]) -> dict[str, float]:
    """Eq. 4.2 from the cases' (Z, NUM_CLASSES) per-slice arrays (:func:`dice_per_slice`).

    ``val/dice``: the seed's score, the mean over slices of each slice's class mean with
    background (:func:`slice_mean_dice`). ``val/dice_organs``: the mean over every
    (slice, organ) present, background left out. ``val/dice_bg``: the same with background.
    """
    every = torch.cat(dice)
    return {
        "val/dice": slice_mean_dice(every),
        "val/dice_organs": _nanmean(every[:, 1:]),
        "val/dice_bg": _nanmean(every),
    }


def _nanmean(x: torch.Tensor) -> float:
    valid = ~torch.isnan(x)
    return float(x[valid].mean()) if valid.any() else float("nan")


def check(configs: StageConfigs) -> list[tuple[str, str]]:
    """Cross-stage checks: the fine-tuned Swin UNETR must match the pretrained encoder."""
    pre, fine = configs.of("pretrain", PretrainConfig), configs.of("finetune", FinetuneConfig)
    errors = []
    if pre.iou_interval is not None:
        for key in ("feature_size", "depths", "num_heads", "window_size"):
            if getattr(pre, key) != getattr(fine, key):
                errors.append((f"finetune.{key}", f"{getattr(fine, key)} differs from pretrain.{key} {getattr(pre, key)}"))
    return errors


# ------------------------------------------------------------------------- the ledger


PAPER = Paper(
    title="Self-supervised learning for medical diagnosis and imaging",
    authors="Wojciech Konieczkowicz",
    venue=(
        "Master's Thesis, AGH University of Science and Technology, Faculty of Computer Science, "
        "Electronics and Telecommunications, Institute of Computer Science "
        "(supervisor: prof. dr hab. inż. Bogdan Kwolek)"
    ),
)

DEPARTURES = (
    Departure(
        "pretrain.iou_interval (crop 2's draw)",
        'Algorithm 1 line 4: "Sample x_2 crop from x" (anywhere on the slice); §4.5: crops '
        "outside the interval occurred below 0.5 % of pairs, for [0, 0] and [0.6, 1.0] only",
        "when i_min > 0, crop 2's corner is drawn within ±(crop size - 1) px of crop 1's (clipped "
        "to the slice), as the authors' code does; when i_min = 0, anywhere",
        "drawn anywhere on a FLARE22-sized slice, [0.6, 1] falls back for 10-43 % of the pairs, "
        "not the reported < 0.5 %: the reported rate is the authors' code's (tests/test_crops.py)",
    ),
    Departure(
        "val/dice",
        "eq. 4.2: Dice of one image's masks; §4.4 gives no average over classes or slices",
        "per 2-D slice the mean of eq. 4.2 over the classes in its ground truth, background "
        "included, then the mean over the validation slices (the authors' evaluation); the "
        "13-organ mean without background is logged as val/dice_organs",
        "the seed's scores come from the authors' code, whose mean includes background per slice",
    ),
    Departure(
        "pretrain.crop_size, finetune.crop_size",
        "§4.3: slices padded to at least 96 voxels; §4.5: 96 x 96 inference windows; the crops' "
        "size is not stated",
        "96 x 96 crops for pretraining and fine-tuning",
        "the padding to 96 exists so that a 96 px crop fits, and the inference window is the "
        "training crop",
    ),
    Departure(
        "SimSiam backbone output",
        '§4.1: f is "a backbone and a projection MLP head"; the encoder\'s output is not named',
        "the global average of the Swin encoder's last stage (16 C = 768 channels, after the "
        "extra patch merging) feeds the projector",
        "the last stage is the encoder's output, the usual SimSiam input; the seed says no more",
    ),
    Departure(
        "pretrain.weight_decay, finetune.weight_decay (exempt parameters)",
        "§4.5: weight decay is not applied to batch normalization parameters and biases",
        "no weight decay on biases and every 1-D parameter: BatchNorm, LayerNorm and InstanceNorm "
        "scales and shifts",
        "the Swin encoder normalises with LayerNorm and the decoder with InstanceNorm; exempting "
        "only BN would decay the encoder's norm scales, which the BN rule is meant to spare",
    ),
    Departure(
        "finetune.drop_path",
        '§4.5: "Additionally, drop path rate of 0.1 is used for the Swin UNETR backbone", among '
        "the pretraining settings",
        "0.1 in pretraining, 0 (MONAI's default) in fine-tuning",
        'the sentence sits between the pretraining settings and "During fine-tuning, ..."',
    ),
    Departure(
        "finetune.batch_size",
        "Table 4.1: batch size 32; §4.5: 2 crops are extracted per image in the batch",
        "32 slices a step, 2 crops each: 64 crops an optimiser step (MONAI's num_samples)",
        "the crops are drawn per image of the batch, so the 32 counts images",
    ),
    Departure(
        "finetune.pos_fraction",
        "§4.5: crops whose central pixel is a labelled organ with p = 0.5",
        "otherwise the centre is a background pixel (MONAI's RandCropByPosNegLabel, pos = neg = 1); "
        "crops are shifted to lie inside the slice",
        "the seed names only the organ-centred half",
    ),
    Departure(
        "finetune.split_seed",
        "§4.3: 15 training and 35 validation cases of the 50 labelled; which ones is not listed",
        "a seeded shuffle of the labelled cases (split_seed 0): the first 35 validate, the next 15 train",
        "the seed's assignment is not published",
    ),
)


def seed_design(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Seed 001's own values (Table 4.1, §4.1, §4.2, §4.5) of this configuration; the
    pretraining's only where it runs (``iou_interval`` not null). The interval itself is
    what the sweeps compare, so it is not listed."""
    # §4.2: C = 48, M = 7, 2 Swin blocks a stage, 3 heads doubling each stage; §4.5: AMP
    swin = {
        "feature_size": 48,
        "window_size": 7,
        "depths": [2, 2, 2, 2],
        "num_heads": [3, 6, 12, 24],
    }
    swin["amp"] = True
    design: dict[str, Any] = {f"finetune.{k}": v for k, v in swin.items()}
    design.update({
        "finetune.epochs": 225, "finetune.batch_size": 32,  # Table 4.1
        "finetune.lr": 1e-3, "finetune.warmup_epochs": 10, "finetune.final_lr": 5e-5,  # Table 4.1
        "finetune.weight_decay": 1e-5,  # Table 4.1
        "finetune.crops_per_image": 2, "finetune.pos_fraction": 0.5,  # §4.5
        "finetune.eval_every": 10, "finetune.eval_every_epoch_from": 90, "finetune.patience": 20,  # §4.5
        "finetune.crop_size": 96, "finetune.sw_overlap": 0.25,  # §4.5 sliding window 96 x 96, overlap 0.25
        "finetune.labelled_cases": 15, "finetune.val_cases": 35,  # §4.3
    })  # fmt: skip
    if configs["pretrain"]["iou_interval"] is not None:
        design.update({f"pretrain.{k}": v for k, v in swin.items()})
        design.update({
            "pretrain.epochs": 100, "pretrain.batch_size": 128,  # Table 4.1
            "pretrain.lr": 0.025, "pretrain.final_lr": 1e-6, "pretrain.momentum": 0.9,  # Table 4.1
            "pretrain.weight_decay": 1e-5,  # Table 4.1
            "pretrain.drop_path": 0.1,  # §4.5
            "pretrain.r1": 30, "pretrain.r2": 4,  # §4.5
            "pretrain.proj_dim": 2048, "pretrain.pred_dim": 512,  # §4.1
            "pretrain.max_slices_per_epoch": None,  # §4.3: every unlabelled slice each epoch
        })  # fmt: skip
    return design


_TINY_NET = {"feature_size": 12, "num_workers": 0}
METHOD = Method(
    name="iou_simsiam_seg",
    seed="001_a6906726c99d77f3.txt",
    data_format="flare22",
    stages={
        "pretrain": StageDef(
            "pretrain",
            PretrainConfig,
            pretrain_recipe,
            cacheable=True,
            skip=lambda cfg: cfg.iou_interval is None,
        ),
        "finetune": StageDef("finetune", FinetuneConfig, finetune_recipe, consumes="pretrain"),
    },  # fmt: skip
    monitor="val/dice",
    tiny={
        "pretrain": {
            **_TINY_NET,
            "crop_size": 32,
            "proj_dim": 64,
            "pred_dim": 16,
            "batch_size": 16,
        },
        "finetune": {**_TINY_NET, "crop_size": 64, "batch_size": 8, "sw_batch_size": 16},
    },
    smoke={
        "pretrain": {"epochs": 2, "max_slices_per_epoch": 64},
        "finetune": {
            "epochs": 3,
            "labelled_cases": 3,
            "val_cases": 2,
            "warmup_epochs": 1,
            "eval_every": 1,
            "patience": None,
        },
    },  # fmt: skip
    smoke_cases=5,
    check=check,
    prepare_data=prepare_data,
    manifest_hash=manifest_hash,
    baseline={"pretrain.iou_interval": None},
    paper=PAPER,
    departures=DEPARTURES,
    seed_design=seed_design,
    # §4.6: a pretraining took 14.9 and a fine-tuning 4.3 GPU hours on average (one V100):
    # 14.9 h / 100 epochs; 4.3 h / 225 epochs (early stopping shortens some, so this is a floor)
    epoch_seconds={"pretrain": 14.9 * 3600 / 100, "finetune": 4.3 * 3600 / 225},
    metrics={
        "pretrain": ("pretrain/collapse", "pretrain/iou_fallback_rate"),
        "finetune": ("val/dice", "val/dice_organs", "val/dice_bg", "val/dice_best"),
    },
)
