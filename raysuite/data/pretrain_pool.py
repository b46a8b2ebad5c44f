"""Seed 002's pretraining data (Song 2020, §3.1): which of ``data.sources`` form the pool
(never a transfer task's held-out data), the pool table written once beside the cache, its
slices for the shard cache, and the (corrupted, clean) restoration pairs the U-Net learns
from. The sampling itself is :mod:`raysuite.data.pool`'s.

The pretraining config (:class:`raysuite.methods.genesis_cls.PretrainConfig`) is read
through :class:`PoolSettings` and :class:`RestorationSettings`, the fields used here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from raysuite.data import pool as pooling
from raysuite.data.cache import ShardCache
from raysuite.data.datasets import ensure_manifest, manifest_path
from raysuite.data.rng import ItemDraws
from raysuite.data.slices import SliceReader
from raysuite.data.sources import source_data


class PoolEntry(BaseModel):
    """Sampling of one source in the pool (§3.1.5): slices per patient (None: all), patients
    (None: all, as the seed)."""

    model_config = ConfigDict(extra="forbid")
    slices_per_patient: int | None = Field(None, ge=1)
    max_patients: int | None = Field(None, ge=1)
    # keep only these of the dataset's own splits; None: every split but a transfer task's
    # held-out ones (MURA keeps train: its valid split is the MURA test set)
    source_splits: list[str] | None = None  # None: MURA keeps train, other formats all


class PoolSettings(Protocol):
    """What the pool reads of a pretraining config: the sources' sampling (``pool``; empty:
    :func:`default_pool`), per-modality slice totals, the cached slice side and the MRI
    normalisation."""

    @property
    def pool(self) -> Mapping[str, PoolEntry]: ...
    @property
    def modality_caps(self) -> dict[str, int]: ...
    @property
    def cache_size(self) -> int: ...
    @property
    def mri_norm(self) -> Literal["max", "percentile"]: ...


class Corruption(Protocol):
    """The Models Genesis transformations: ``(S, S)`` clean image in [0, 1] -> (corrupted,
    clean) ``(S, S)`` arrays."""

    def pair(
        self, image: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]: ...


class CorruptionSettings(Protocol):
    """A config's ``transforms``: builds the :class:`Corruption`."""

    def build(self) -> Corruption: ...


class RestorationSettings(Protocol):
    """What :class:`RestorationPairs` reads of a pretraining config: the clip side in cached
    pixels, the network's input side and the transformations."""

    @property
    def crop(self) -> int: ...
    @property
    def input_size(self) -> int: ...
    @property
    def transforms(self) -> CorruptionSettings: ...


# The splits of a transfer task's source that are its held-out data, which the pool never
# takes: MURA's ``valid`` split is the MURA test set (§4.2.4.4); every LUNA16 subset is some
# fold's test set (§4.2.1.7) and one pretraining serves every fold, so none may join (the
# seed leaves LUNA16 out of the pool, §5.1). None: every split.
HELD_OUT_SPLITS: dict[str, list[str] | None] = {"mura": ["valid"], "luna16": None}


def pool_splits(fmt: str, entry: PoolEntry) -> list[str] | None:
    """The source splits a pool entry keeps (None: all): its ``source_splits``, else every
    split but a transfer task's held-out ones (MURA: ``train``; see :data:`HELD_OUT_SPLITS`)."""
    if entry.source_splits is not None:
        return entry.source_splits
    return ["train"] if fmt == "mura" else None


def held_out_in_pool(fmt: str, entry: PoolEntry) -> str | None:
    """Why a pool entry of format ``fmt`` would take a transfer task's held-out data, or None."""
    if fmt not in HELD_OUT_SPLITS:
        return None
    held = HELD_OUT_SPLITS[fmt]
    if held is None:
        return f"a {fmt} source is the transfer task's cross-validated data (each part is some fold's test set)"
    kept = pool_splits(fmt, entry)
    taken = sorted(set(held) & set(kept)) if kept is not None else held
    return f"keeps {fmt}'s held-out split(s) {taken} (the transfer test set)" if taken else None


def default_pool(data: dict[str, Any]) -> list[str]:
    """The sources an empty ``pretrain.pool`` takes: every one but those whose every split
    is a transfer task's held-out data (LUNA16)."""
    return [
        n for n, s in data["sources"].items() if HELD_OUT_SPLITS.get(s["format"], []) is not None
    ]


def pool_sources(
    data: dict[str, Any], cfg: PoolSettings
) -> tuple[list[pooling.Source], list[str]]:
    """The pool's sources (``cfg.pool``, or :func:`default_pool`) with their manifest hashes;
    each keeps :func:`pool_splits` of its rows."""
    names = list(cfg.pool) or default_pool(data)
    sources, hashes = [], []
    for name in names:
        # pyright reads pydantic's positional Field(default) as no default: PoolEntry's has
        spec, entry = data["sources"][name], cfg.pool.get(name, PoolEntry())  # pyright: ignore[reportCallIssue]
        df, meta = ensure_manifest(source_data(data, name))
        splits = pool_splits(spec["format"], entry)
        if splits is not None:
            df = df.loc[df.source_split.isin(splits)]
        sources.append(pooling.Source(name, spec["format"], spec["root"], df, spec.get("modality"),
                                      spec.get("body_part"), entry.slices_per_patient, entry.max_patients))  # fmt: skip
        hashes.append(f"{meta['hash']}|{splits}")
    return sources, hashes


def pool_table(
    data: dict[str, Any], cfg: PoolSettings, seed: int = 0
) -> tuple[pd.DataFrame, Path, str]:
    """The pretraining pool (rows of :func:`raysuite.data.pool.build_pool`), written once
    beside the cache as ``pools/<hash>.parquet``; returns (pool, path, hash)."""
    sources, hashes = pool_sources(data, cfg)
    key = pooling.pool_hash(sources, cfg.modality_caps, seed, hashes)
    path = (
        Path(manifest_path(source_data(data, sources[0].name))).parent.parent
        / "pools"
        / f"{key}.parquet"
    )
    if path.exists():
        return pd.read_parquet(path), path, key
    table = pooling.build_pool(sources, cfg.modality_caps, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{np.random.default_rng().integers(1 << 30)}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
    return table, path, key


class PoolSliceLoader:
    """Picklable ``pool_id -> (S, S) uint8`` slice in [0, 255] for the shard cache."""

    def __init__(self, table: pd.DataFrame, roots: dict[str, str], cfg: PoolSettings):
        self.rows = {r["pool_id"]: r for r in table.to_dict("records")}
        self.roots, self.size = roots, cfg.cache_size
        self.mri: Literal["max", "percentile"] = cfg.mri_norm
        self.reader = SliceReader()

    def __call__(self, pool_id: str) -> np.ndarray:
        row = self.rows[pool_id]
        raw = self.reader(Path(self.roots[row["source"]]), row, int(row["slice"]))
        image = pooling.normalise(raw, row["group"], pooling.is_png8(row["path"]), self.mri)
        return np.round(pooling.square(image, self.size) * 255).astype(np.uint8)


class RestorationPairs(Dataset):
    """Pool slices -> (corrupted (1, S, S), clean (1, S, S)) in [0, 1]: a random
    ``crop`` clip of the cached slice (a centred one when ``fixed``), resized to S, then
    the Models Genesis transformations. ``fixed`` (validation) draws from the index only."""

    def __init__(self, cache: ShardCache, ids: list[str], cfg: RestorationSettings, fixed: bool = False):
        self.cache, self.ids, self.fixed = cache, ids, fixed
        self.crop = cfg.crop  # in cached pixels: the cache keeps a 512 slice at 512
        self.size, self.transforms, self.draws = cfg.input_size, cfg.transforms.build(), ItemDraws()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(i) if self.fixed else self.draws.rng(i)
        image = self.cache[self.ids[i]] / 255.0
        side, c = image.shape[0], self.crop
        y, x = ((side - c) // 2,) * 2 if self.fixed else rng.integers(0, side - c + 1, 2)
        clip = torch.from_numpy(np.ascontiguousarray(image[y : y + c, x : x + c], np.float32))
        clip = F.interpolate(
            clip[None, None], size=(self.size, self.size), mode="bilinear", align_corners=False
        )
        corrupted, clean = self.transforms.pair(clip[0, 0].clamp(0, 1).numpy(), rng)
        return torch.from_numpy(corrupted)[None].float(), torch.from_numpy(clean)[None].float()
