"""Per-epoch measurements of the training loop: time, throughput, data wait, GPU memory.

The keys and their meaning are documented in :mod:`raysuite.train.telemetry`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from raysuite.train.telemetry import DATA_WAIT, EPOCH_TIME, GPU_MEM, SAMPLES_PER_S


def batch_len(batch: Any) -> int:
    """Samples in a collated batch: a tensor's first dimension; for a tuple or list, that
    of its first element when it is a tensor or a list (``(images, labels)`` or a detection
    batch ``(list_of_images, list_of_targets)``), else the list's length; for a mapping,
    that of its first value. Anything else counts as one sample."""
    if isinstance(batch, Mapping):
        batch = next(iter(batch.values()), [])
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, list | tuple):
        first = batch[0] if batch else None
        if torch.is_tensor(first) and first.dim():
            return int(first.shape[0])
        return len(first) if isinstance(first, list | tuple) else len(batch)
    return 1


class EpochMeter:
    """Times one epoch's training part and the waits for its batches.

    Epoch time runs from construction to :meth:`stop`; ``batches(loader)`` wraps the
    loader's iterator, and the time spent creating it and in each ``next()`` is data wait."""

    def __init__(self, device: torch.device):
        self.device = device
        self.samples, self.wait_s = 0, 0.0
        self._t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        end = object()
        t = time.perf_counter()
        it = iter(loader)
        while (batch := next(it, end)) is not end:
            self.wait_s += time.perf_counter() - t
            self.samples += batch_len(batch)
            yield batch
            t = time.perf_counter()
        self.wait_s += time.perf_counter() - t

    def stop(self, world_size: int) -> dict[str, float]:
        """The epoch's loop keys (see the module docstring), for this rank."""
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        out = {
            EPOCH_TIME: elapsed,
            SAMPLES_PER_S: self.samples / elapsed * world_size,
            DATA_WAIT: min(self.wait_s / elapsed, 1.0),
        }
        if self.device.type == "cuda":
            out[GPU_MEM] = torch.cuda.max_memory_allocated(self.device) / 1e9
        return out
