"""Tracking faults are survived: MLflow calls from the sweep's callbacks are retried with
backoff on transient errors only, what still fails is printed and the sweep goes on, a row
an outage kept back is logged later and once, and runs are ended whatever fails.

The callbacks' hooks are called directly with fake trials (no Ray); the last test stops and
restarts a real ``mlflow server``."""

import shutil
from collections import Counter

import pytest
import requests
from conftest import MlflowServer, free_port
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from raysuite.plan import POINT, grid_trials
from raysuite.spec import parse_spec
from raysuite.track import mlflow_runs as track
from raysuite.track import retry
from raysuite.tune.callbacks import MetricLog, MlflowTrainCallback, MlflowTuneCallback
from raysuite.tune.outcome import CHECKPOINTED, COMPLETE

RAW = {
    "name": "faults",
    "method": "iou_simsiam_seg",
    "objective": {"metric": "val/dice"},
    "stages": {"pretrain": {"batch_size": 8}, "finetune": {"batch_size": 4, "labelled_cases": 3, "val_cases": 2}},
    "search": {"grid": {"pretrain.iou_interval": [[0.3, 0.6]]}},
}


@pytest.fixture(autouse=True)
def waits(monkeypatch):
    """A fake clock that only the retries' sleeps move; the delays asked for are recorded.
    Every test starts with tracking up (no cool-down left by another)."""
    now, asked = [1000.0], []

    def sleep(seconds):
        asked.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(retry, "sleep", sleep)
    monkeypatch.setattr(retry, "clock", lambda: now[0])
    monkeypatch.setattr(retry, "_down_until", float("-inf"))
    return now, asked


@pytest.fixture()
def spec(flare_root, tmp_path):
    return parse_spec({**RAW, "data": {"format": "flare22", "root": str(flare_root), "cache_dir": str(tmp_path / "cache")}})


def _locked():
    """What SqlAlchemyStore raises for sqlite's ``database is locked``."""
    raise MlflowException("(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE)


def _refused():
    """What MLflow's REST client raises once its HTTP retries are spent on a stopped server:
    an MlflowException raised while handling the requests error (no cause, a context)."""
    try:
        raise requests.ConnectionError("Failed to establish a new connection: [Errno 111] Connection refused")
    except requests.ConnectionError as err:
        raise MlflowException(f"API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with exception {err}")  # noqa: B904


def _rate_limited():
    raise RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "too many requests"})


def _invalid():
    raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "a value MLflow refuses"})


class Flaky:
    """A real MlflowClient whose calls fail on demand: ``failing[name]`` holds one error
    maker per call of ``name`` that fails before the real call is made; while ``down``,
    every call fails as against a stopped server. ``calls`` counts the attempts."""

    def __init__(self, client):
        self.client, self.failing, self.down, self.calls = client, {}, False, Counter()

    def __getattr__(self, name):
        real = getattr(self.client, name)
        if not callable(real):
            return real

        def call(*args, **kwargs):
            self.calls[name] += 1
            if self.down:
                _refused()
            if self.failing.get(name):
                self.failing[name].pop(0)()
            return real(*args, **kwargs)

        return call


class _Trial:
    def __init__(self, trial_id, config, last_result=None):
        self.trial_id, self.config, self.last_result = trial_id, config, last_result or {}


def _row(epoch, loss, checkpointed=True):
    return {"finetune/epoch": float(epoch), "finetune/loss": loss, CHECKPOINTED: float(checkpointed)}


def _history(client, run_id, key="finetune/loss"):
    return sorted(track.metric_history(client, run_id, key))


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An sqlite store with MLflow's tables made, to copy: each test's store (and the real
    server's) skips MLflow's migrations."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    track.client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def store(tmp_path, empty_store):
    """A sqlite store with one run: (real client, flaky client over it, run id)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    real = track.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = real.create_run(real.create_experiment("e")).info.run_id
    return real, Flaky(real), run


@pytest.mark.parametrize("error", [_locked, _refused, _rate_limited])
def test_a_transient_fault_is_retried_with_backoff_and_the_row_logged_once(store, waits, error):
    real, client, run = store
    client.failing["log_batch"] = [error] * 3
    log = MetricLog(client, run, set())
    log.add(_row(1, 1.0))
    assert waits[1] == list(retry.DELAYS_S[:3]) and client.calls["log_batch"] == 4
    assert _history(real, run) == [(1, 1.0)] and not log.unsent
    log.add(_row(2, 0.9))
    assert _history(real, run) == [(1, 1.0), (2, 0.9)]


def test_a_refused_write_is_not_retried_warned_and_not_marked_logged(store, waits, capsys):
    real, client, run = store
    client.failing["log_batch"] = [_invalid]
    log = MetricLog(client, run, set())
    log.add(_row(1, 1.0))
    assert waits[1] == [] and client.calls["log_batch"] == 1
    assert f"[raysuite] tracking: run {run}: metrics at step 1 refused" in capsys.readouterr().out
    assert ("finetune/loss", 1) not in log.logged and not log.unsent  # dropped: it would fail again
    log.add(_row(2, 0.9))
    assert _history(real, run) == [(2, 0.9)]


def test_an_outage_keeps_rows_back_and_they_land_once_it_is_over(store, waits, capsys):
    real, client, run = store
    now, asked = waits
    log = MetricLog(client, run, set())
    client.down = True
    log.add(_row(1, 1.0))  # every attempt fails: the whole backoff, then a cool-down
    assert asked == list(retry.DELAYS_S) and client.calls["log_batch"] == len(retry.DELAYS_S) + 1
    assert "[raysuite] tracking: unavailable (MlflowException: API request to" in capsys.readouterr().out
    log.add(_row(2, 0.9))  # within the cool-down: not even tried
    assert client.calls["log_batch"] == len(retry.DELAYS_S) + 1
    assert [step for _, step, _ in log.unsent] == [1, 2] and not log.logged  # nothing marked logged
    client.down = False
    now[0] += retry.COOLDOWN_S
    log.add(_row(3, 0.8))
    assert _history(real, run) == [(1, 1.0), (2, 0.9), (3, 0.8)] and not log.unsent
    assert {("finetune/loss", s) for s in (1, 2, 3)} <= log.logged


def test_mlflows_own_http_retries_are_not_multiplied(waits):
    """An attempt that took MLflow's HTTP retries (minutes) is not made again past the
    budget, and the cool-down grows with it, so a dead server costs a fifth of the time."""
    now, _ = waits
    attempts = []

    def slow_failure():
        attempts.append(now[0])
        now[0] += 10.0  # urllib3 retrying inside MLflow's REST client
        _refused()

    with pytest.raises(MlflowException, match="Connection refused"):
        retry.retried(slow_failure)
    assert len(attempts) == 2  # 10 s, a 0.5 s wait, 10 s: a third would start after BUDGET_S
    assert retry._down_until - now[0] == pytest.approx(retry.OUTAGE_FACTOR * 20.5)
    with pytest.raises(retry.TrackingDown, match="tracking was unavailable"):
        retry.retried(slow_failure)
    assert len(attempts) == 2


def test_cleanup_never_raises_and_is_tried_during_an_outage(store, capsys):
    real, client, run = store
    client.down = True
    with pytest.raises(MlflowException, match="Connection refused"):
        retry.retried(client.get_run, run)  # an outage begins: its cool-down too
    before = client.calls["set_terminated"]
    assert track.close_run(client, run, failed=True) is False
    assert client.calls["set_terminated"] == before + len(retry.DELAYS_S) + 1  # tried, cool-down or not
    child = real.create_run(real.get_run(run).info.experiment_id, tags={track.PARENT: run}).info.run_id
    assert track.close_children(client, run) is None
    out = capsys.readouterr().out
    assert f"[raysuite] tracking: could not end run {run}: MlflowException" in out
    assert f"could not fail the unfinished children of run {run}" in out
    client.down = False
    assert track.close_children(client, run) == 1 and track.close_run(client, run) is True
    assert real.get_run(child).info.status == "FAILED" and real.get_run(run).info.status == "FINISHED"


@pytest.mark.parametrize("comes_back", [False, True])
def test_the_tune_callback_survives_an_outage_of_any_length(spec, store, capsys, comes_back):
    real, client, _ = store
    parent = track.start_parent(real, "faults", {}, {})
    callback = MlflowTuneCallback(spec, parent, "unused: the client is set below")
    callback._client = client
    trial = _Trial("t1", {POINT: grid_trials(spec)[0]})
    callback.on_trial_start(0, [], trial)
    run = callback.runs["t1"]
    client.down = True
    for epoch, loss in ((1, 0.9), (2, 0.8)):
        callback.on_trial_result(epoch, [], trial, _row(epoch, loss))
    trial.last_result = {"finetune/loss": 0.8, COMPLETE: 1.0}
    callback.on_trial_result(3, [], trial, trial.last_result)
    callback.on_trial_complete(3, [], trial)  # no hook raised
    assert f"run {run} not ended yet" in capsys.readouterr().out
    client.down = not comes_back
    callback.on_experiment_end([trial])
    out = capsys.readouterr().out
    if comes_back:  # the study's end sends what the outage kept back and ends the run
        assert _history(real, run) == [(1, 0.9), (2, 0.8)] and _history(real, run, COMPLETE) == [(0, 1.0)]
        assert real.get_run(run).info.status == "FINISHED" and "lost" not in out
    else:  # lost, and said so; the run is left for the sweep's close_children
        assert f"run {run}: 3 metric rows could not be logged and are lost" in out
        assert f"could not end run {run}" in out
        assert real.get_run(run).info.status == "RUNNING" and not real.get_run(run).data.metrics
        assert track.close_children(real, parent) == 1 and real.get_run(run).info.status == "FAILED"


def test_the_train_callback_never_fails_the_training(monkeypatch, capsys):
    """Train V2's controller turns an exception in a UserCallback's after_report into a
    training failure: neither a dead tracking server nor an unusable URI may raise."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    callback = MlflowTrainCallback("0" * 32, f"http://127.0.0.1:{free_port()}")
    callback.after_report(run_context=None, metrics=[_row(1, 1.0)], checkpoint=None)
    callback.log({"finetune/loss": 1.0, COMPLETE: 1.0})  # the driver's relay
    assert "[raysuite] tracking: unavailable" in capsys.readouterr().out
    assert [step for _, step, _ in callback._metric_log.unsent] == [1, 0]  # kept for a later write
    broken = MlflowTrainCallback("0" * 32, "nosuchscheme://x")
    broken.after_report(run_context=None, metrics=[_row(1, 1.0)], checkpoint=None)
    assert "[raysuite] tracking: log failed and was skipped" in capsys.readouterr().out


@pytest.mark.timeout(1500)
def test_a_real_server_stopped_mid_sweep_and_restarted(spec, tmp_path, empty_store, waits, monkeypatch, capsys):
    now, _ = waits
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the retrying is raysuite's alone here
    root = tmp_path / "server"
    root.mkdir()
    shutil.copy(empty_store, root / "mlflow.db")
    server = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log").start()
    uri = server.uri
    try:
        parent = track.start_parent(track.client(uri), "faults", {}, {})
        callback = MlflowTuneCallback(spec, parent, uri)
        trial = _Trial("t1", {POINT: grid_trials(spec)[0]})
        callback.on_trial_start(0, [], trial)
        callback.on_trial_result(1, [], trial, _row(1, 0.9))
        server.stop()
        callback.on_trial_result(2, [], trial, _row(2, 0.8))  # refused, retried, kept back
        callback.on_trial_result(3, [], trial, _row(3, 0.7))  # the cool-down: kept back
        assert "[raysuite] tracking: unavailable" in capsys.readouterr().out
        server.start()  # the same store, the same port
        now[0] += retry.COOLDOWN_S
        callback.on_trial_result(4, [], trial, _row(4, 0.6))
        trial.last_result = {"finetune/loss": 0.6, COMPLETE: 1.0}
        callback.on_trial_result(5, [], trial, trial.last_result)
        callback.on_trial_complete(5, [], trial)
        client = track.client(uri)
        run = callback.runs["t1"]
        assert _history(client, run) == [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6)]
        assert client.get_run(run).info.status == "FINISHED"
    finally:
        server.stop()
