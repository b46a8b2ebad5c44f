"""A training DataLoader sharded over DDP ranks, its data order seeded by the stage's seed
(plain PyTorch, no Ray).

Ray Train's ``prepare_data_loader`` swaps any sampler that is not a ``DistributedSampler``
for ``DistributedSampler(dataset, shuffle=...)`` with its default seed 0, so every seed
repeat of a configuration saw the same data order, and a capped
``RandomSampler(num_samples=...)`` (a per-epoch cap) became a full pass over the dataset.
:func:`shard_loader` keeps what the method asked for:

- a shuffled loader (``RandomSampler``) draws each epoch's order from
  ``numpy.random.default_rng((seed, epoch))``, the same generator on every rank (``epoch`` set
  with :meth:`ShardedSampler.set_epoch`, which the epoch loop calls);
- a capped ``RandomSampler`` keeps its cap: ``num_samples`` per epoch over all the ranks,
  ``ceil(num_samples / world_size)`` each;
- an unshuffled loader (``SequentialSampler``) keeps index order;
- rank ``r`` of ``W`` takes positions ``r::W`` of the epoch list, padded by wrapping to a
  multiple of ``W`` (as ``DistributedSampler`` with ``drop_last=False``), so every rank runs
  the same number of steps and the shards are disjoint up to that padding;
- a sampler that already shards (a ``DistributedSampler``, e.g. the repeat-factor sampler) is
  left in place, checked against ``rank``/``world_size``.

Batches stay on the CPU: every method's ``step`` moves its batch to the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler


class ShardedSampler(Sampler[int]):
    """Rank ``rank``'s share of an epoch of ``n`` items (see the module docstring).

    ``num_samples``: items per epoch over all ranks (default ``n``); ``replacement``: draw them
    independently (``RandomSampler(replacement=True)``), else from successive permutations of
    ``range(n)`` (``RandomSampler``'s rule, so a cap below ``n`` draws distinct items).
    """

    def __init__(
        self,
        n: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        num_samples: int | None = None,
        replacement: bool = False,
    ) -> None:
        if n < 1:
            raise ValueError(f"a sharded sampler needs at least one item, got {n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of world_size {world_size} ranks")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (it seeds numpy's SeedSequence), got {seed}")
        total = n if num_samples is None else num_samples
        if total < 1:
            raise ValueError(f"num_samples must be >= 1, got {total}")
        if not shuffle and (total != n or replacement):
            raise ValueError("an unshuffled sampler keeps every item once: no num_samples or replacement")
        self.n, self.rank, self.world_size, self.seed = n, rank, world_size, seed
        self.shuffle, self.total, self.replacement = shuffle, total, replacement
        self.per_rank = math.ceil(total / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        """The epoch's list over all ranks, before padding (the same on every rank)."""
        if not self.shuffle:
            return np.arange(self.n)
        rng = np.random.default_rng((self.seed, self.epoch))
        if self.replacement:
            return rng.integers(0, self.n, size=self.total)
        rounds = math.ceil(self.total / self.n)
        return np.concatenate([rng.permutation(self.n) for _ in range(rounds)])[: self.total]

    def __iter__(self) -> Iterator[int]:
        indices = np.resize(self.epoch_indices(), self.per_rank * self.world_size)  # pad by wrapping
        return iter(indices[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


def _sharded_sampler(loader: DataLoader, rank: int, world_size: int, seed: int) -> Sampler[int] | None:
    """The sampler replacing ``loader``'s, or None where it stays (see :func:`shard_loader`)."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        if (sampler.num_replicas, sampler.rank) != (world_size, rank):
            raise ValueError(
                f"{type(sampler).__name__} shards for rank {sampler.rank} of {sampler.num_replicas}, "
                f"this worker is rank {rank} of {world_size}"
            )
        return None
    n = len(loader.dataset) if isinstance(loader.dataset, Sized) else 0
    if type(sampler) is SequentialSampler:
        return ShardedSampler(n, rank, world_size, seed, shuffle=False)
    if type(sampler) is RandomSampler:
        return ShardedSampler(n, rank, world_size, seed, num_samples=sampler.num_samples, replacement=sampler.replacement)
    if world_size == 1:
        return None
    raise TypeError(
        f"{type(sampler).__name__} does not shard over {world_size} DDP workers: subclass DistributedSampler "
        "(num_replicas, rank, set_epoch) or use shuffle=True/False or a RandomSampler"
    )


def shard_loader(loader: DataLoader, rank: int, world_size: int, seed: int) -> DataLoader:
    """``loader`` with its sampler replaced by a :class:`ShardedSampler` of this rank, seeded
    by ``seed`` (the stage's), and otherwise the same: batch size, collate function, workers,
    ``drop_last``, ``pin_memory``, ``persistent_workers``... A loader whose sampler already
    shards (a ``DistributedSampler``), or over an ``IterableDataset``, is returned as it is;
    a custom batch sampler, or at ``world_size > 1`` a custom sampler, is refused."""
    if isinstance(loader.dataset, IterableDataset):
        return loader
    if type(loader.batch_sampler) is not BatchSampler or loader.batch_size is None:
        if world_size == 1 or isinstance(getattr(loader.batch_sampler, "sampler", None), DistributedSampler):
            return loader
        raise TypeError(f"{type(loader.batch_sampler).__name__}: a custom batch sampler does not shard over DDP workers")
    sampler = _sharded_sampler(loader, rank, world_size, seed)
    if sampler is None:
        return loader
    kwargs: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "sampler": sampler,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "drop_last": loader.drop_last,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
        "in_order": getattr(loader, "in_order", True),
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, **kwargs)
