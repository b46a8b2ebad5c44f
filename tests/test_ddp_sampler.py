"""The training loader's sampler under DDP (raysuite.train.sharding): the stage's seed
reaches the data order, ranks get disjoint shards of one epoch, a per-epoch cap holds."""

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, TensorDataset

from raysuite.data.sampling import RepeatFactorSampler
from raysuite.train.sharding import ShardedSampler, shard_loader

N = 40


def _dataset(n=N):
    return TensorDataset(torch.arange(n))


def _order(loader):
    return [int(i) for (batch,) in loader for i in batch]


def _sharded(seed, rank=0, world=2, epoch=1, **loader_kw):
    loader = shard_loader(DataLoader(_dataset(), batch_size=4, **loader_kw), rank, world, seed)
    loader.sampler.set_epoch(epoch)
    return loader


def test_two_seeds_give_different_orders():
    assert _order(_sharded(0, shuffle=True)) != _order(_sharded(1, shuffle=True))


def test_a_seed_gives_the_same_order_on_rerun():
    assert _order(_sharded(7, shuffle=True)) == _order(_sharded(7, shuffle=True))


def test_seed_reaches_a_single_worker_too():
    assert _order(_sharded(0, world=1, rank=0, shuffle=True)) != _order(_sharded(1, world=1, rank=0, shuffle=True))


def test_set_epoch_changes_the_order():
    assert _order(_sharded(3, epoch=1, shuffle=True)) != _order(_sharded(3, epoch=2, shuffle=True))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_are_disjoint_and_cover_the_epoch(world):
    shards = [_order(_sharded(5, rank=r, world=world, shuffle=True)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of steps
    seen = [i for s in shards for i in s]
    assert set(seen) == set(range(N))
    assert len(seen) - N == (-N) % world  # only the wrap padding repeats an item


def test_capped_random_sampler_keeps_its_cap_split_per_rank():
    cap, world = 12, 2
    shards = []
    for rank in range(world):
        dataset = _dataset()
        loader = DataLoader(dataset, batch_size=3, sampler=RandomSampler(dataset, num_samples=cap), drop_last=True)
        sharded = shard_loader(loader, rank, world, seed=11)
        sharded.sampler.set_epoch(1)
        assert len(sharded.sampler) == cap // world and len(sharded) == cap // world // 3
        shards.append(_order(sharded))
    assert all(len(s) == cap // world for s in shards)
    assert len(set(shards[0]) | set(shards[1])) == cap  # distinct items, as RandomSampler draws them


def test_cap_above_the_dataset_and_replacement_follow_random_sampler():
    over = ShardedSampler(10, 0, 2, seed=1, num_samples=25)
    assert len(over) == 13 and len(list(over)) == 13
    drawn = ShardedSampler(10, 0, 1, seed=1, num_samples=8, replacement=True)
    assert len(list(drawn)) == 8 and all(0 <= i < 10 for i in drawn)


def test_unshuffled_loader_keeps_index_order():
    assert _order(_sharded(9, rank=0, shuffle=False)) == list(range(0, N, 2))
    assert _order(_sharded(9, rank=1, shuffle=False)) == list(range(1, N, 2))


def test_rebuilt_loader_keeps_its_settings():
    def collate(batch):
        return batch

    loader = DataLoader(_dataset(), batch_size=6, shuffle=True, num_workers=1, collate_fn=collate,
                        drop_last=True, pin_memory=True, persistent_workers=True, prefetch_factor=3)  # fmt: skip
    out = shard_loader(loader, 1, 2, seed=0)
    assert isinstance(out.sampler, ShardedSampler) and (out.sampler.rank, out.sampler.world_size) == (1, 2)
    assert out.batch_size == 6 and out.collate_fn is collate and out.num_workers == 1
    assert out.drop_last and out.pin_memory and out.persistent_workers and out.prefetch_factor == 3


def test_distributed_sampler_is_left_in_place_and_checked():
    sampler = RepeatFactorSampler(torch.ones(N).numpy(), num_replicas=2, rank=1, seed=0)
    loader = DataLoader(_dataset(), batch_size=4, sampler=sampler)
    assert shard_loader(loader, 1, 2, seed=5) is loader
    with pytest.raises(ValueError, match="rank 1 of 2"):
        shard_loader(loader, 0, 2, seed=5)


class _Custom(Sampler[int]):
    def __iter__(self):
        return iter(range(N))

    def __len__(self):
        return N


def test_custom_sampler_is_refused_under_ddp_and_kept_alone():
    loader = DataLoader(_dataset(), batch_size=4, sampler=_Custom())
    assert shard_loader(loader, 0, 1, seed=0) is loader
    with pytest.raises(TypeError, match="does not shard"):
        shard_loader(loader, 0, 2, seed=0)


def test_ray_runtime_prepare_loader_shards_with_the_stage_seed():
    from raysuite.tune.worker import RayRuntime

    runtime = object.__new__(RayRuntime)  # no Ray Train context: set what prepare_loader reads
    runtime.rank, runtime.world_size, runtime.seed = 1, 2, 42
    out = runtime.prepare_loader(DataLoader(_dataset(), batch_size=4, shuffle=True))
    assert isinstance(out.sampler, ShardedSampler)
    assert (out.sampler.rank, out.sampler.world_size, out.sampler.seed) == (1, 2, 42)
