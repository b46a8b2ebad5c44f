"""Seed 002's transfer tasks (Song 2020, §4.2) as classification datasets: LUNA16 candidate
patches (10 % of each subset's negatives, five folds of subset pairs) and MURA radiographs
of one body part (MURA's own split), positives or every image copied as random affine
variants, and the plateau's validation part carved out of the training rows by patient.

The fine-tuning config (:class:`raysuite.methods.genesis_cls.FinetuneConfig`) is read
through :class:`TransferSettings`, the fields used here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from raysuite.data import manifest
from raysuite.data.cache import ShardCache
from raysuite.data.datasets import ensure_manifest, manifest_path
from raysuite.data.formats import luna16, mura
from raysuite.data.rng import ItemDraws


class TransferSettings(Protocol):
    """What the task datasets read of a fine-tuning config."""

    @property
    def task(self) -> Literal["luna16", "mura"]: ...
    @property
    def seed(self) -> int: ...
    @property
    def planes(self) -> Sequence[str]: ...
    @property
    def body_part(self) -> str: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def negative_fraction(self) -> float: ...
    @property
    def positive_copies(self) -> int: ...
    @property
    def mura_copies(self) -> int: ...
    @property
    def zoom(self) -> tuple[float, float]: ...
    @property
    def rotation(self) -> float: ...
    @property
    def shift_mm(self) -> float: ...
    @property
    def max_train_images(self) -> int | None: ...
    def size(self) -> int: ...


def random_affine(image: torch.Tensor, rng: np.random.Generator, zoom: tuple[float, float], degrees: float,
                  shift_px: tuple[float, float] = (0.0, 0.0), flips: bool = True) -> torch.Tensor:  # fmt: skip
    """(1, H, W) -> (1, H, W): zoom in ``zoom``, rotation in ±``degrees``, shift in
    ±``shift_px`` (rows, columns) and random horizontal / vertical flips about the centre
    (bilinear, borders replicated)."""
    _, h, w = image.shape
    scale = rng.uniform(*zoom)
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    dy, dx = (rng.uniform(-s, s) for s in shift_px)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    fx = -1.0 if flips and rng.random() < 0.5 else 1.0
    fy = -1.0 if flips and rng.random() < 0.5 else 1.0
    theta = torch.tensor(
        [[cos * fx, -sin * fy, -2 * dx / w], [sin * fx, cos * fy, -2 * dy / h]], dtype=torch.float32
    )
    grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)
    return F.grid_sample(
        image[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]


class _RowLoader:
    """Picklable ``sample_id -> image`` through a format's ``preprocess(root, row, prep)``."""

    def __init__(self, preprocess: Any, root: str, rows: dict[str, dict[str, Any]], prep: Any):
        self.preprocess, self.root, self.rows, self.prep = preprocess, Path(root), rows, prep

    def __call__(self, sample_id: str) -> np.ndarray:
        return self.preprocess(self.root, self.rows[sample_id], self.prep)


class TaskImages(Dataset):
    """Rows -> ((3, S, S) image in [0, 1], label) for the classifier. Each row appears
    ``copies[row]`` times; copy 0 is the image itself, the others random affine variants
    (§4.2.1.3, §4.2.4.2). LUNA16 patches are cached with a margin and centre-cropped after
    the transform so rotations bring in real tissue. ``caches`` holds one cache per plane
    (LUNA16) or one (MURA); with several, a training item draws its plane each epoch and a
    ``planes``-given row (validation) always uses its own."""

    def __init__(self, caches: list[ShardCache], rows: pd.DataFrame, labels: np.ndarray, copies: np.ndarray,
                 size: int, cfg: TransferSettings, shift_px: np.ndarray | None = None,
                 planes: np.ndarray | None = None):  # fmt: skip
        self.caches, self.size, self.cfg, self.planes = caches, size, cfg, planes
        self.ids = rows.sample_id.tolist()
        self.labels = labels.astype(np.float32)
        self.items = [(i, c) for i in range(len(self.ids)) for c in range(int(copies[i]))]
        self.shift_px = shift_px if shift_px is not None else np.zeros((len(self.ids), 2))
        self.draws = ItemDraws()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, copy = self.items[k]
        rng = self.draws.rng(k) if copy or (len(self.caches) > 1 and self.planes is None) else None
        if self.planes is not None:
            plane = int(self.planes[i])
        else:
            plane = (
                int(rng.integers(len(self.caches)))
                if len(self.caches) > 1 and rng is not None
                else 0
            )
        image = torch.from_numpy(self.caches[plane][self.ids[i]])[None]
        if copy:
            assert rng is not None  # drawn for every copy (above)
            cfg = self.cfg
            image = random_affine(image, rng, cfg.zoom, cfg.rotation, tuple(self.shift_px[i]))
        h, w = image.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        image = image[:, top : top + self.size, left : left + self.size].clamp(0, 1)
        return image.expand(3, -1, -1), torch.tensor(self.labels[i])


def luna_split(
    data: dict[str, Any], fold: int | None, cfg: TransferSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) candidate rows: 10 % of each subset's negatives and every positive
    (§4.2.1.3), fold ``fold`` = subsets 2k and 2k+1 held out (§4.2.1.7)."""
    df, _ = ensure_manifest(data)
    split = data.get("split") or {}
    df = df.loc[luna16.negative_subsample_mask(df, cfg.negative_fraction, int(split.get("seed", 0)))]
    folds = luna16.subset_folds(df, int(split.get("folds") or luna16.FOLDS))
    held = folds == (fold or 0)
    return df.loc[~held], df.loc[held]


def mura_split(data: dict[str, Any], cfg: TransferSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) images of ``cfg.body_part`` on MURA's own split (§4.2.4.1)."""
    df, _ = ensure_manifest(data)
    if cfg.body_part != "all":
        df = df.loc[df.path.str.contains(f"/{cfg.body_part}/", regex=False)]
    return df.loc[df.source_split == "train"], df.loc[df.source_split == "valid"]


def task_labels(rows: pd.DataFrame, task: str) -> np.ndarray:
    if task == "luna16":
        return np.array([luna16.LABEL in list(labels) for labels in rows.labels], np.float32)
    return np.array([mura.target(r) for r in rows.to_dict("records")], np.float32)


def task_datasets(
    data: dict[str, Any], fold: int | None, cfg: TransferSettings
) -> tuple[TaskImages, TaskImages, TaskImages | None]:
    """(train, held-out fold, plateau validation part or None) datasets of the task."""
    size = cfg.size()
    if cfg.task == "luna16":
        train, val = luna_split(data, fold, cfg)
        margin = int(np.ceil(size * 1.5))  # rotation by 45° and zoom 0.9 stay inside
        preps: list[Any] = [luna16.Preprocessing(patch=margin, plane=plane) for plane in cfg.planes]
        preprocess = luna16.preprocess
    else:
        train, val = mura_split(data, cfg)
        preps, preprocess = [mura.Preprocessing(size=size)], mura.preprocess
    if cfg.max_train_images:
        positives = task_labels(train, cfg.task) > 0
        train = pd.concat([train[positives].head(cfg.max_train_images // 2),
                           train[~positives].head(cfg.max_train_images - min(positives.sum(), cfg.max_train_images // 2))])  # fmt: skip
    for name, rows in (("training", train), ("validation", val)):
        if rows.empty or len(set(task_labels(rows, cfg.task))) < 2:
            raise ValueError(
                f"{cfg.task}: the {name} rows of fold {fold} need both classes ({len(rows)} rows)"
            )
    train, plateau_rows = plateau_split(train, cfg)
    used = pd.concat([train, val, plateau_rows])
    _, meta = ensure_manifest(data)
    records = {r["sample_id"]: r for r in used.to_dict("records")}
    caches = [ShardCache(manifest_path(data), meta["hash"], f"genesis-{cfg.task}-{prep.key()}", used.sample_id.tolist(),
                         _RowLoader(preprocess, data["root"], records, prep), shard_size=256)
              for prep in preps]  # fmt: skip
    labels = task_labels(train, cfg.task)
    if cfg.task == "luna16":
        copies = np.where(labels > 0, cfg.positive_copies, 1)
        spacing = np.array(
            [list(s)[:2] if s is not None and len(s) >= 2 else [1.0, 1.0] for s in train.spacing],
            float,
        )
        shift = cfg.shift_mm / np.maximum(
            spacing[:, ::-1], 1e-3
        )  # (x, y) mm spacing -> (rows, columns) pixels
    else:
        copies, shift = np.full(len(train), cfg.mura_copies), None
    train_set = TaskImages(caches, train, labels, copies, size, cfg, shift)
    held = [(rows, TaskImages(caches, rows, task_labels(rows, cfg.task), np.ones(len(rows), int), size, cfg,
                              planes=fixed_planes(rows, len(caches))))
            for rows in (val, plateau_rows)]  # fmt: skip
    return train_set, held[0][1], (held[1][1] if len(plateau_rows) else None)


def fixed_planes(rows: pd.DataFrame, count: int) -> np.ndarray:
    """Each row's plane index in ``range(count)`` for evaluation: drawn once from a hash of
    its ``sample_id``, so every epoch, arm and fold scores a candidate on the same view."""
    return np.array(
        [int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) % count for s in rows.sample_id], int
    )


def plateau_split(train: pd.DataFrame, cfg: TransferSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, the plateau's validation rows): ``cfg.val_fraction`` of the training
    rows' images carved out by patient (a seeded shuffle of patients, ``cfg.seed``), none
    when it is 0. The held-out fold stays untouched."""
    if cfg.val_fraction == 0:
        return train, train.iloc[:0]
    parts = manifest.assign_splits(
        train, (1 - cfg.val_fraction, cfg.val_fraction), cfg.seed, ("train", "val")
    )
    carved = parts.split.values == "val"
    if carved.all() or not carved.any():
        raise ValueError(
            f"finetune.val_fraction {cfg.val_fraction}: {len(train)} training rows leave no patient on one side"
        )
    return train.loc[~carved], train.loc[carved]
