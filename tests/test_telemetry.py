"""raysuite's own metrics: the epoch loop's measurements and their export through
``ray.util.metrics`` (names and tags held to the table in ``raysuite.train.telemetry``)."""

import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import raysuite.methods  # noqa: F401  (first: importing raysuite.train.loop first is an import cycle)
from raysuite.train import telemetry as names
from raysuite.train.loop import Recipe, fit, seed_everything
from raysuite.train.meter import batch_len
from raysuite.train.runtime import LocalRuntime
from raysuite.tune import telemetry

SAMPLES, BATCH = 16, 4


class Points(Dataset):
    """``SAMPLES`` (x, y) pairs of a linear map; ``delay_s`` of sleep per item read."""

    def __init__(self, delay_s: float = 0.0):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(SAMPLES, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]])
        self.delay_s = delay_s

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int):
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.x[i], self.y[i]


def _fit(dataset: Dataset, epochs: int = 3) -> list[dict[str, float]]:
    seed_everything(0)

    def step(net, batch, device):
        time.sleep(0.005)  # a floor under each step's compute, the same for every loader
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


def test_epoch_reports_time_throughput_and_data_wait():
    reports = _fit(Points())
    assert len(reports) == 3
    for r in reports:
        assert {"train/epoch_time_s", "train/samples_per_s", "train/data_wait_fraction"} <= set(r)
        assert "train/gpu_mem_gb" not in r  # CUDA only
        assert 0.0 <= r["train/data_wait_fraction"] <= 1.0
        # 16 samples, one rank: the rate is the samples over the reported epoch time
        assert r["train/samples_per_s"] == pytest.approx(
            SAMPLES / r["train/epoch_time_s"], rel=1e-9
        )


def test_slow_dataset_waits_longer_than_fast_one():
    """20 ms per item read (80 ms per batch) against in-memory tensors, with a 5 ms step:
    the slow loader's wait share is far above the fast one's (mean over three epochs)."""

    def mean_wait(dataset):
        return sum(r["train/data_wait_fraction"] for r in _fit(dataset)) / 3

    assert mean_wait(Points(delay_s=0.02)) > mean_wait(Points())


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
