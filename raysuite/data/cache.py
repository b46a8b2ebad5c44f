"""Preprocessed slice cache: one ``.npy`` pair per case, memory-mapped for training.

Cached under ``<cache_dir>/<format>/<content key>/`` where the key hashes the source file
(path, size, mtime) and the preprocessing, so an edited file or a new setting re-caches.
Writes go to a temporary name and are renamed, so concurrent trials never read half files.
"""

from __future__ import annotations

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
