"""A single-process :class:`~raysuite.train.loop.Runtime` for tests and debugging."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader


class LocalRuntime:
    """Runs in this process; checkpoints are copied under ``checkpoint_root`` when given."""

    rank = 0
    world_size = 1

    def __init__(self, checkpoint_root: str | Path | None = None, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.root = Path(checkpoint_root) if checkpoint_root else None
        self.reports: list[dict[str, float]] = []
        self.checkpoints: list[Path] = []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def broadcast(self, value: Any) -> Any:
        return value

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        return dict(values)

    def gather(self, value: Any) -> list[Any]:
        return [value]

    def all_true(self, flag: bool) -> bool:
        return bool(flag)

    @contextlib.contextmanager
    def restore(self) -> Iterator[Path | None]:
        yield self.checkpoints[-1] if self.checkpoints else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None and self.root is not None:
            dest = self.root / f"checkpoint_{len(self.checkpoints):06d}"
            shutil.copytree(checkpoint_dir, dest)
            self.checkpoints.append(dest)
