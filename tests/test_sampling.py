import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from raysuite.data.sampling import RepeatFactorSampler, repeat_factors

# 50 images. Class "a" is in 25 images (f = 0.5), "b" in 5 (f = 0.1), "c" in 2 (f = 0.04).
# With t = 0.4: r(a) = max(1, sqrt(0.8)) = 1, r(b) = sqrt(4) = 2, r(c) = sqrt(10).
TABLE: list[list[str]] = (
    [["a", "c", "c"]]  # two "c" boxes count once: else f(c) = 3/50 and r(c) = sqrt(20/3)
    + [["b", "c"]]
    + [["a", "b", "b"]]
    + [["b"]] * 3
    + [["a"]] * 23
    + [[]] * 21  # images without boxes
)
EXPECTED = np.array([math.sqrt(10)] * 2 + [2.0] * 4 + [1.0] * 44)


def test_repeat_factors_by_hand():
    assert len(TABLE) == 50
    r = repeat_factors(TABLE, threshold=0.4)
    assert r.dtype == np.float64 and r.shape == (50,)
    np.testing.assert_allclose(r, EXPECTED, rtol=1e-12)


def test_repeat_factors_int_labels_and_thresholds():
    # 10 images: class 7 in 5 (f = 0.5), class 3 in 1 (f = 0.1), image 9 has none.
    table = [[7, 3], [7], [7, 7], [7], [7], [1], [1], [1], [1], []]
    # class 1 is in 4 images: f = 0.4 -> r = 1 at t = 0.4
    np.testing.assert_allclose(repeat_factors(table), [2, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    # t = 1: r(7) = sqrt(2), r(3) = sqrt(10), r(1) = sqrt(2.5)
    s2, s10, s25 = math.sqrt(2), math.sqrt(10), math.sqrt(2.5)
    np.testing.assert_allclose(
        repeat_factors(table, threshold=1.0), [s10, s2, s2, s2, s2, s25, s25, s25, s25, 1]
    )
    np.testing.assert_array_equal(repeat_factors(table, threshold=0.0), np.ones(10))
    assert repeat_factors([]).shape == (0,)
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0, got -0.1"):
        repeat_factors(table, threshold=-0.1)


def test_is_a_distributed_sampler_with_world_defaults():
    s = RepeatFactorSampler(EXPECTED)
    assert isinstance(s, DistributedSampler)  # Ray's prepare_data_loader keeps it
    assert (s.num_replicas, s.rank) == (1, 0)  # no process group initialised
    assert s.epoch_length == round(EXPECTED.sum()) == 58
    assert len(s.dataset) == 50


def test_mean_repetitions_match_factors():
    s = RepeatFactorSampler(EXPECTED, num_replicas=1, rank=0, seed=3)
    epochs = 2000
    counts = sum(np.bincount(s.epoch_indices(e), minlength=50) for e in range(epochs)) / epochs
    # cut to L = 58 < sum(r) = 58.32 biases counts by ~ -0.6 %
    np.testing.assert_allclose(counts, EXPECTED, rtol=0.03)
    assert counts[:2].mean() == pytest.approx(math.sqrt(10), rel=0.02)


def test_rounding_redrawn_per_epoch_and_reproducible():
    # shuffle=False: the index-sorted list shows only the stochastic rounding
    s = RepeatFactorSampler(EXPECTED, num_replicas=1, rank=0, seed=0, shuffle=False)
    draws = [s.epoch_indices(e) for e in range(10)]
    assert all(np.all(np.diff(d[: len(d) // 2]) >= 0) for d in draws)
    assert len({d.tobytes() for d in draws}) > 1
    again = RepeatFactorSampler(EXPECTED, num_replicas=1, rank=0, seed=0, shuffle=False)
    for e in range(10):
        np.testing.assert_array_equal(again.epoch_indices(e), draws[e])

    a = RepeatFactorSampler(EXPECTED, num_replicas=1, rank=0, seed=5)
    b = RepeatFactorSampler(EXPECTED, num_replicas=1, rank=0, seed=5)
    other = RepeatFactorSampler(EXPECTED, num_replicas=1, rank=0, seed=6)
    a.set_epoch(4)
    b.set_epoch(4)
    other.set_epoch(4)
    assert list(a) == list(b) != list(other)
    b.set_epoch(5)
    assert list(a) != list(b)


def test_shards_partition_the_epoch_list():
    replicas = 3
    for epoch in range(4):
        shards = []
        for rank in range(replicas):
            s = RepeatFactorSampler(EXPECTED, num_replicas=replicas, rank=rank, seed=1)
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(shards[-1]) == len(s) == math.ceil(58 / replicas) == 20
        full = s.epoch_indices()
        assert full.shape == (60,)
        np.testing.assert_array_equal(full[58:], full[:2])  # wrap padding 58 -> 60
        merged = np.empty(60, dtype=np.int64)
        for rank, shard in enumerate(shards):
            merged[rank::replicas] = shard
        np.testing.assert_array_equal(merged, full)


@pytest.mark.parametrize("replicas", [1, 2, 3, 7])
def test_len_matches_yield_every_epoch(replicas):
    for rank in {0, replicas - 1}:
        s = RepeatFactorSampler(EXPECTED, num_replicas=replicas, rank=rank, seed=2)
        for epoch in range(6):
            s.set_epoch(epoch)
            got = list(s)
            assert len(got) == len(s) == math.ceil(58 / replicas)
            assert all(isinstance(i, int) and 0 <= i < 50 for i in got)


class _Indexed(Dataset):
    def __len__(self) -> int:
        return 50

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


def test_works_in_dataloader_with_constant_length():
    s = RepeatFactorSampler(EXPECTED, num_replicas=2, rank=1, seed=0)
    loader = DataLoader(_Indexed(), batch_size=4, sampler=s)
    lengths, epochs = set(), []
    for epoch in range(5):
        s.set_epoch(epoch)
        batches = list(loader)
        lengths.add(len(loader))
        assert len(batches) == len(loader) == math.ceil(29 / 4)
        epochs.append(torch.cat(batches).tolist())
        assert epochs[-1] == list(s)
    assert lengths == {8}
    assert epochs[0] != epochs[1]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"factors must be a non-empty 1-D array, got shape \(0,\)"):
        RepeatFactorSampler(np.array([]))
    with pytest.raises(ValueError, match="with at least one >= 1"):
        RepeatFactorSampler(np.array([0.5, 0.2]))
    with pytest.raises(ValueError, match="repeat factors must be finite"):
        RepeatFactorSampler(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"Invalid rank 2, rank should be in the interval \[0, 1\]"):
        RepeatFactorSampler(EXPECTED, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        RepeatFactorSampler(EXPECTED).set_epoch(-1)
