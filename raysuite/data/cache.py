"""Preprocessed-array caches, memory-mapped for training.

``SliceCache``: variable-shape 3-D cases (FLARE22 volumes), one ``.npy`` pair per case.
``ShardCache``: fixed-shape 2-D images of a manifest (radiographs, patches) in shards.

SliceCache keys hash the source file (path, size, mtime) and the preprocessing; ShardCache
keys the manifest's content hash and the preprocessing. Either way an edited file or a new
setting re-caches. Writes go to a temporary name and are renamed, so concurrent trials never read half files.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raysuite.data.readers import ReadError


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAYSUITE_CACHE", Path.home() / ".cache" / "raysuite"))


def _file_key(path: str | None) -> str:
    if path is None:
        return "none"
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}"


class SliceCache:
    """Caches ``(Z, H, W)`` float16 images and uint8 labels per case."""

    def __init__(self, cache_dir: str | Path, fmt: str, prep_key: str):
        self.dir = Path(cache_dir) / fmt
        self.prep_key = prep_key

    def _paths(self, image: str, label: str | None) -> tuple[Path, Path]:
        key = hashlib.sha1(f"{_file_key(image)}|{_file_key(label)}|{self.prep_key}".encode()).hexdigest()[:20]
        base = self.dir / key[:2] / key
        return base.with_suffix(".img.npy"), base.with_suffix(".seg.npy")

    def get(
        self,
        image: str,
        label: str | None,
        build: Callable[[str, str | None], tuple[np.ndarray, np.ndarray | None]],
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Memory-mapped (image, label) of a case, building and storing it on a miss."""
        img_path, seg_path = self._paths(image, label)
        if not img_path.exists() or (label is not None and not seg_path.exists()):
            img, seg = build(image, label)
            img_path.parent.mkdir(parents=True, exist_ok=True)
            if seg is not None:
                _atomic_save(seg_path, seg.astype(np.uint8))
            _atomic_save(img_path, img.astype(np.float16))
        try:
            img = np.load(img_path, mmap_mode="r")
            seg = np.load(seg_path, mmap_mode="r") if label is not None else None
        except (OSError, ValueError) as err:
            raise ReadError(img_path, f"corrupt cache entry ({err}); delete it to rebuild") from None
        return img, seg


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


class ShardCache:
    """Fixed-shape preprocessed images of one manifest, in ``.npy`` shards beside it.

    Directory: ``<manifest dir>/<manifest stem>.cache/<manifest hash>-<hash of prep and
    sample ids>/``, so a new ingest, a new preprocessing or another subset of samples gets a
    new cache and never reads a stale one. Rows
    are the manifest's ``sample_id`` order, ``shard_size`` per shard; a shard is built the
    first time one of its samples is asked for (under a file lock: concurrent trials and
    DDP ranks build it once) and then memory-mapped, so training never decodes DICOM.
    """

    def __init__(
        self,
        manifest_path: str | Path,
        manifest_hash: str,
        prep_key: str,
        sample_ids: list[str],
        load: Callable[[str], np.ndarray],
        shard_size: int = 256,
        dtype: type = np.float16,
    ):
        manifest_path = Path(manifest_path)
        self.ids = sorted(sample_ids)
        # the sample set is part of the key: shards are positional, so two callers caching
        # different subsets of one manifest must never share a directory
        prep = hashlib.sha1("\n".join([prep_key, *self.ids]).encode()).hexdigest()[:10]
        self.dir = manifest_path.parent / f"{manifest_path.name.removesuffix('.parquet')}.cache" / f"{manifest_hash}-{prep}"
        self.index = {s: i for i, s in enumerate(self.ids)}
        self.load = load
        self.shard_size = shard_size
        self.dtype = dtype
        self._open: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _shard_path(self, shard: int) -> Path:
        return self.dir / f"shard_{shard:05d}.npy"

    def _shard(self, shard: int) -> np.ndarray:
        if shard in self._open:
            return self._open[shard]
        path = self._shard_path(shard)
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not path.exists():
                    ids = self.ids[shard * self.shard_size : (shard + 1) * self.shard_size]
                    _atomic_save(path, np.stack([np.asarray(self.load(s), self.dtype) for s in ids]))
        try:
            self._open[shard] = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise ReadError(path, f"corrupt cache shard ({err}); delete it to rebuild") from None
        return self._open[shard]

    def build(self) -> None:
        """Build every shard now (e.g. once on the driver before trials start)."""
        for shard in range((len(self.ids) + self.shard_size - 1) // self.shard_size):
            self._shard(shard)

    def __getitem__(self, sample_id: str) -> np.ndarray:
        """The cached image of ``sample_id`` as a float32 array (a copy out of the map)."""
        i = self.index[sample_id]
        return np.asarray(self._shard(i // self.shard_size)[i % self.shard_size], np.float32)

    def __getstate__(self) -> dict:  # DataLoader workers re-open the maps themselves
        return {**self.__dict__, "_open": {}}
