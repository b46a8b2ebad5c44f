"""raysuite's own metrics: the epoch loop's measurements and their export through
``ray.util.metrics`` (names and tags held to the table in ``raysuite.train.telemetry``)."""

import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import raysuite.methods  # noqa: F401  (first: importing raysuite.train.loop first is an import cycle)
from raysuite.train import meter
from raysuite.train import telemetry as names
from raysuite.train.loop import Recipe, fit, seed_everything
from raysuite.train.meter import batch_len
from raysuite.train.runtime import LocalRuntime
from raysuite.tune import telemetry

SAMPLES, BATCH = 16, 4
# binary fractions, so every sum of clock ticks below is exact
READ_S = 2.0**-6  # the slow dataset's time per item read (4 per batch)
STEP_S = 2.0**-8  # every step's compute


class Clock:
    """The meter's ``time.perf_counter``: it moves only when a test's dataset or step says,
    so the measurements are exact sums of those ticks, whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(meter, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


class Points(Dataset):
    """``SAMPLES`` (x, y) pairs of a linear map; each item read advances ``clock`` by
    ``read_s`` (a slow disk)."""

    def __init__(self, clock: Clock, read_s: float = 0.0):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(SAMPLES, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]])
        self.clock, self.read_s = clock, read_s

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int):
        self.clock.advance(self.read_s)
        return self.x[i], self.y[i]


def _fit(dataset: Points, epochs: int = 3) -> list[dict[str, float]]:
    seed_everything(0)

    def step(net, batch, device):
        dataset.clock.advance(STEP_S)  # every step's compute, the same for every loader
        x, y = batch
        return {"loss": F.mse_loss(net(x.to(device)), y.to(device))}

    recipe = Recipe(
        stage="train", model=nn.Linear(3, 1), train_loader=DataLoader(dataset, batch_size=BATCH),
        make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.05), lr_at=lambda s, t: 0.05,
        step=step, epochs=epochs,
    )  # fmt: skip
    runtime = LocalRuntime(device="cpu")
    fit(recipe, runtime)
    return runtime.reports


def test_epoch_reports_time_throughput_and_data_wait(clock):
    """An in-memory dataset: the epoch is its 4 steps' compute (4 * STEP_S = 1/64 s), no
    data wait; 16 samples over 1/64 s is 1024 samples/s."""
    reports = _fit(Points(clock))
    assert len(reports) == 3
    for r in reports:
        assert "train/gpu_mem_gb" not in r  # CUDA only
        assert r["train/epoch_time_s"] == 4 * STEP_S == 2.0**-6
        assert r["train/data_wait_fraction"] == 0.0
        assert r["train/samples_per_s"] == SAMPLES / (4 * STEP_S) == 1024.0


def test_a_slow_dataset_counts_as_data_wait(clock):
    """Reads of 1/64 s per item (4 per batch, 16 per epoch: 1/4 s of waiting) beside
    1/64 s of compute: the epoch takes 1/4 + 1/64 = 17/64 s, of which 16/17 is data wait,
    and 16 samples over 17/64 s is 1024/17 samples/s. The share is read off the meter's
    clock, so the same numbers come on a loaded machine and an idle one."""
    reports = _fit(Points(clock, read_s=READ_S))
    assert len(reports) == 3
    for r in reports:
        assert r["train/epoch_time_s"] == pytest.approx(17 / 64, rel=1e-12)
        assert r["train/data_wait_fraction"] == pytest.approx(16 / 17, rel=1e-12)
        assert r["train/samples_per_s"] == pytest.approx(1024 / 17, rel=1e-12)


def test_samples_per_second_counts_every_rank(clock):
    """The meter itself: 8 samples in 1/2 s on one rank of 4 is 64 samples/s for the trial."""
    m = meter.EpochMeter(torch.device("cpu"))
    for _ in m.batches([torch.zeros(4, 3), torch.zeros(4, 3)]):
        clock.advance(0.25)
    out = m.stop(world_size=4)
    assert out == {"epoch_time_s": 0.5, "samples_per_s": 64.0, "data_wait_fraction": 0.0}


@pytest.mark.parametrize(
    ("batch", "n"),
    [
        (torch.zeros(5, 3), 5),
        ((torch.zeros(6, 3), torch.zeros(6)), 6),
        ([[torch.zeros(3, 8, 8)] * 2, [{"boxes": torch.zeros(1, 4)}] * 2], 2),  # detection batch
        ({"image": torch.zeros(7, 1, 4, 4), "label": torch.zeros(7)}, 7),
        ([1, 2, 3], 3),
    ],
)
def test_batch_len(batch, n):
    assert batch_len(batch) == n


class FakeMetric:
    """Stands in for ``ray.util.metrics.Gauge`` / ``Counter`` and records every call."""

    created: list["FakeMetric"] = []

    def __init__(self, name, description="", tag_keys=None):
        self.name, self.description, self.tag_keys = name, description, tag_keys
        self.calls: list[tuple[float, dict[str, str]]] = []
        FakeMetric.created.append(self)

    def set(self, value, tags=None):
        self.calls.append((value, dict(tags)))

    def inc(self, value=1.0, tags=None):
        self.calls.append((value, dict(tags)))


@pytest.fixture
def fake_metrics(monkeypatch):
    FakeMetric.created = []
    kinds = {}
    for kind in ("Gauge", "Counter"):
        fake = type(kind, (FakeMetric,), {})
        kinds[kind] = fake
        monkeypatch.setattr(telemetry, kind, fake)
    monkeypatch.setattr(telemetry, "_metrics", {})
    monkeypatch.setattr(telemetry, "_warned", False)
    return kinds


class _Trial:
    def __init__(self, trial_id, last_result=None):
        self.trial_id = trial_id
        self.last_result = last_result or {}


def _record_everything() -> telemetry.TrialStateCallback:
    epoch = {"pretrain/loss": 0.5, "pretrain/epoch": 2.0, "pretrain/samples_per_s": 120.0,
             "pretrain/data_wait_fraction": 0.25, "pretrain/gpu_mem_gb": 3.5, "pretrain/epoch_time_s": 8.0,
             "artifact/x.csv": "a,b\n"}  # fmt: skip
    telemetry.record_epoch(epoch, experiment="exp", trial="cfg1-r0")
    telemetry.record_stage_cache("exp", "pretrain", hit=True)
    telemetry.record_stage_cache("exp", "finetune", hit=False)
    callback = telemetry.TrialStateCallback("exp")
    a, b, c = _Trial("a", {"raysuite/complete": 1.0}), _Trial("b"), _Trial("c", {"val/dice": 0.5})
    for trial in (a, b, c):
        callback.on_trial_start(0, [], trial)
    callback.on_trial_complete(1, [], a)
    callback.on_trial_error(2, [], b)
    callback.on_trial_complete(3, [], c)  # stopped by the scheduler: no closing row
    return callback


def test_exported_names_tags_and_kinds_follow_the_table(fake_metrics):
    _record_everything()
    created = {m.name: m for m in FakeMetric.created}
    assert set(created) == {d.name for d in names.METRICS}  # every metric, nothing else
    for d in names.METRICS:
        metric = created[d.name]
        assert type(metric) is fake_metrics["Gauge" if d.kind == "gauge" else "Counter"]
        assert metric.tag_keys == d.tags and metric.description == d.description
        assert metric.calls and all(set(tags) == set(d.tags) for _, tags in metric.calls), d.name
    samples = created["raysuite_samples_per_s"].calls
    assert samples == [(120.0, {"experiment": "exp", "trial": "cfg1-r0", "stage": "pretrain"})]
    assert created["raysuite_stage_cache_hits"].calls == [
        (1.0, {"experiment": "exp", "stage": "pretrain"})
    ]
    assert created["raysuite_stage_cache_misses"].calls == [
        (1.0, {"experiment": "exp", "stage": "finetune"})
    ]
    last = {tags["state"]: value for value, tags in created["raysuite_trials"].calls[-4:]}
    assert last == {"running": 0.0, "finished": 1.0, "pruned": 1.0, "failed": 1.0}


def test_prometheus_names():
    assert names.METRIC["raysuite_samples_per_s"].prometheus_name == "ray_raysuite_samples_per_s"
    assert (
        names.METRIC["raysuite_stage_cache_hits"].prometheus_name
        == "ray_raysuite_stage_cache_hits_total"
    )


def test_a_failing_export_warns_once_and_never_raises(fake_metrics, monkeypatch):
    def broken(self, value, tags=None):
        raise RuntimeError("metrics agent gone")

    monkeypatch.setattr(fake_metrics["Gauge"], "set", broken)
    with pytest.warns(UserWarning, match="metrics agent gone"):
        telemetry.record_epoch({"train/samples_per_s": 1.0}, experiment="exp", trial="t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        telemetry.record_epoch({"train/samples_per_s": 1.0}, experiment="exp", trial="t")
        telemetry.record_trials("exp", {"running": 1})


def test_real_ray_metrics_accept_the_tags_without_a_running_ray(monkeypatch):
    """``ray.util.metrics`` checks the tag keys itself (no ``ray.init`` needed): nothing
    is dropped with a warning."""
    monkeypatch.setattr(telemetry, "_metrics", {})
    monkeypatch.setattr(telemetry, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _record_everything()
    assert {type(m).__name__ for m in telemetry._metrics.values()} == {"Gauge", "Counter"}
