"""Random generators for Dataset ``__getitem__``: one per process, seeded from torch."""

from __future__ import annotations

import os

import numpy as np
import torch


class ProcessRng:
    """numpy and torch generators seeded from ``torch.initial_seed()``, re-created when the
    process, the DataLoader worker or torch's seed changes: distinct per worker and per
    rank (after ``seed_everything``), reproducible for a given seed."""

    _owner: tuple[int, int, int] | None = None

    def _refresh(self) -> None:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), info.id if info else -1, torch.initial_seed())
        if self._owner != owner:
            seed = torch.initial_seed() % 2**63
            self._np = np.random.default_rng(seed)
            self._torch = torch.Generator().manual_seed(seed)
            self._owner = owner

    def numpy(self) -> np.random.Generator:
        self._refresh()
        return self._np

    def torch(self) -> torch.Generator:
        self._refresh()
        return self._torch


class ItemDraws:
    """Per-item random generators that differ across epochs and DataLoader workers and are
    reproducible from torch's seed (``torch.initial_seed`` differs per worker and epoch)."""

    def __init__(self) -> None:
        self.calls = 0

    def rng(self, index: int) -> np.random.Generator:
        self.calls += 1
        return np.random.default_rng((torch.initial_seed() % 2**63, index, self.calls))
