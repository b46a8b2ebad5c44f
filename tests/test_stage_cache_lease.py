"""Stage-cache leases: one trial computes a key while the others wait; a producer that dies
lets its lease expire and one waiter takes over; a live producer keeps its lease; markers
are written atomically (local files and a real S3 API) and a torn one is computed again.

The lease rules themselves (expiry, renewal, release, a lost lease) are first held without
Ray or real time: the coordinator's class on a clock the test moves, and ``get_or_compute``
against it in this process."""

import json
import logging
import os
import threading
import time
import types
from concurrent.futures import Future

import pytest
import ray

import raysuite.storage as storage_mod
from raysuite.tune import stage_cache

KEY, STAGE = "k" * 32, "pretrain"
LEASE_S, POLL_S = 1.0, 0.05
WAIT_S = 60.0  # a trial still waiting after this fails the test


class Compute:
    """A stage's computation: counts its calls, takes ``seconds``, returns a marker naming
    ``name``; ``started`` is set once a call began."""

    def __init__(self, name: str, seconds: float = 0.0, fail: bool = False) -> None:
        self.name, self.seconds, self.fail = name, seconds, fail
        self.calls = 0
        self.started = threading.Event()

    def __call__(self) -> dict:
        self.calls += 1
        self.started.set()
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        return {"checkpoint": f"/ckpt/{self.name}", "stage": STAGE, "history": [{"epoch": 1}]}


class FakeClock:
    """``stage_cache``'s ``time``: ``monotonic`` reads a clock that only ``advance`` (or a
    waiter's ``sleep``) moves; ``on_sleep`` runs at each sleep, as other trials would."""

    def __init__(self) -> None:
        self.now = 500.0
        self.sleeps: list[float] = []
        self.on_sleep: list = []

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        if self.on_sleep:
            self.on_sleep.pop(0)()


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(
        stage_cache, "time", types.SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep, strftime=time.strftime, gmtime=time.gmtime)
    )  # fmt: skip
    return fake


@pytest.fixture()
def coordinator(clock):
    """The coordinator's own class (not an actor), on the fake clock. The clock is passed in,
    not patched into the module: once a sweep in this process made the actor, Ray holds a
    copy of the class rebuilt by value, whose methods read their own globals."""
    return stage_cache.StageCacheCoordinator.__ray_actor_class__(clock=clock.monotonic)


def test_an_expired_lease_passes_to_exactly_one_claimant(coordinator, clock):
    c = coordinator
    assert c.claim(KEY, "dead", 10.0)
    clock.advance(10.0)  # exactly the lease: still held
    assert not c.claim(KEY, "w1", 10.0)
    clock.advance(0.5)
    assert [c.claim(KEY, owner, 10.0) for owner in ("w1", "w2", "w3")] == [True, False, False]
    assert not c.renew(KEY, "dead") and not c.finish(KEY, STAGE, True, "dead", "inv")  # it holds nothing
    assert c.stats("inv") == {"computed": {}, "hits": {}}
    assert not c.claim(KEY, "w2", 10.0)  # the dead owner's finish released nobody's lease
    assert c.leases[KEY].owner == "w1"


def test_renewals_keep_a_lease_past_its_length(coordinator, clock):
    c = coordinator
    assert c.claim(KEY, "a", 10.0)
    for _ in range(3):  # 24 s since the claim, never 10 s without a renewal
        clock.advance(8.0)
        assert c.renew(KEY, "a") and not c.claim(KEY, "b", 10.0)
    clock.advance(10.5)
    assert c.claim(KEY, "b", 10.0) and not c.renew(KEY, "a")
    assert c.claim(KEY, "b", 10.0)  # a holder claiming again (a retried trial) keeps it


def test_finish_releases_at_once_and_counts_only_a_success(coordinator):
    c = coordinator
    assert c.claim(KEY, "a", 10.0) and c.finish(KEY, STAGE, False, "a", "inv")
    assert c.claim(KEY, "b", 10.0)  # no lease to wait out after a failure
    assert c.finish(KEY, STAGE, True, "b", "inv") and KEY not in c.leases
    assert not c.finish(KEY, STAGE, True, "b", "inv")  # released: a second finish counts nothing
    c.hit(STAGE, "inv")
    assert c.stats("inv") == {"computed": {STAGE: [KEY]}, "hits": {STAGE: 1}}
    assert c.stats("other") == {"computed": {}, "hits": {}}


class _InProcess:
    """The coordinator as ``ray.get_actor`` would hand it over: ``actor.claim.remote(...)``
    calls the instance's method now; ``ray.get`` returns the value."""

    def __init__(self, instance) -> None:
        self.instance = instance

    def __getattr__(self, name: str):
        return types.SimpleNamespace(remote=getattr(self.instance, name))


@pytest.fixture()
def local_cache(coordinator, monkeypatch, tmp_path):
    """(storage, scope, coordinator): ``get_or_compute`` against the in-process coordinator."""
    actor = _InProcess(coordinator)
    fake_ray = types.SimpleNamespace(get_actor=lambda name, namespace=None: actor, get=lambda ref, timeout=None: ref)
    monkeypatch.setattr(stage_cache, "ray", fake_ray)
    return str(tmp_path / "storage"), stage_cache.Scope("actor", "inv", lease_s=10.0), coordinator


@pytest.mark.parametrize("taker_fails", [False, True])
def test_a_lost_lease_publishes_nothing_while_another_holds_it(local_cache, clock, taker_fails):
    """"slow" computes, its lease expires and "taker" claims the key before slow's compute
    returns. Slow writes no marker: it waits (polling) while taker holds the lease; taker
    publishes (slow returns taker's marker, computed=False) or fails and releases (slow
    claims again and publishes its own)."""
    storage, scope, c = local_cache
    writes = []  # the markers get_or_compute wrote
    real_write = stage_cache.write_marker

    def recording_write(st, key, content):
        writes.append(content["checkpoint"])
        real_write(st, key, content)

    def slow_compute():
        clock.advance(10.5)  # no heartbeat reached the coordinator for a lease
        assert c.claim(KEY, "taker", 10.0)
        return {"checkpoint": "/ckpt/slow", "stage": STAGE}

    def taker_ends():
        assert stage_cache.read_marker(storage, KEY) is None  # slow has written nothing
        if taker_fails:
            assert c.finish(KEY, STAGE, False, "taker", "inv")
        else:
            real_write(storage, KEY, {"checkpoint": "/ckpt/taker", "stage": STAGE})
            assert c.finish(KEY, STAGE, True, "taker", "inv")

    clock.on_sleep.append(taker_ends)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage_cache, "write_marker", recording_write)
        marker, computed = stage_cache.get_or_compute(storage, KEY, STAGE, "slow", slow_compute, scope, poll_s=0.25)
    assert clock.sleeps == [0.25]  # one poll while the taker held the lease
    owner = "slow" if taker_fails else "taker"
    assert (marker["checkpoint"], computed) == (f"/ckpt/{owner}", taker_fails)
    assert stage_cache.read_marker(storage, KEY) == marker
    assert writes == (["/ckpt/slow"] if taker_fails else [])  # slow wrote only once it held the lease
    assert KEY not in c.leases  # released on finish, whoever finished
    assert c.stats("inv") == {"computed": {STAGE: [KEY]}, "hits": {} if taker_fails else {STAGE: 1}}


def test_waiters_poll_until_the_marker_and_count_a_hit(local_cache, clock):
    storage, scope, c = local_cache
    assert c.claim(KEY, "producer", 10.0)
    publish = lambda: stage_cache.write_marker(storage, KEY, {"checkpoint": "/ckpt/p"})  # noqa: E731
    clock.on_sleep += [lambda: None, publish]  # the producer publishes during the second poll
    marker, computed = stage_cache.get_or_compute(storage, KEY, STAGE, "waiter", lambda: {}, scope, poll_s=1.0)
    assert (marker, computed, clock.sleeps) == ({"checkpoint": "/ckpt/p"}, False, [1.0, 1.0])
    assert c.stats("inv")["hits"] == {STAGE: 1} and c.leases[KEY].owner == "producer"


@pytest.fixture()
def cache(ray_session, tmp_path):
    """A storage and its coordinator (short leases), killed after the test."""
    storage = str(tmp_path / "storage")
    scope, actor = stage_cache.start_coordinator(storage, "inv1", lease_s=LEASE_S)
    yield storage, scope, actor
    ray.kill(actor)


def _get(storage, scope, owner, compute, key=KEY):
    return stage_cache.get_or_compute(storage, key, STAGE, owner, compute, scope, poll_s=POLL_S)


def _start(call, *args) -> Future:
    """``call(*args)`` in a daemon thread, a trial of its own: one that never returns fails
    its test at ``result(WAIT_S)`` and cannot keep pytest from exiting."""
    future = Future()

    def run():
        try:
            future.set_result(call(*args))
        except BaseException as err:
            future.set_exception(err)

    threading.Thread(target=run, daemon=True).start()
    return future


def test_two_claimants_compute_a_key_once(cache):
    storage, scope, actor = cache
    compute = Compute("first", seconds=2 * LEASE_S)  # longer than a lease: renewals keep it
    go = threading.Barrier(2)

    def trial(owner):
        go.wait()
        return _get(storage, scope, owner, compute)

    results = [f.result(WAIT_S) for f in [_start(trial, "a"), _start(trial, "b")]]
    assert compute.calls == 1
    assert sorted(computed for _, computed in results) == [False, True]
    assert results[0][0] == results[1][0] == stage_cache.read_marker(storage, KEY)
    assert ray.get(actor.stats.remote("inv1")) == {"computed": {STAGE: [KEY]}, "hits": {STAGE: 1}}


def test_a_dead_owners_lease_expires_and_one_waiter_takes_over(cache):
    storage, scope, actor = cache
    assert ray.get(actor.claim.remote(KEY, "dead", LEASE_S))  # and never a heartbeat
    assert not ray.get(actor.claim.remote(KEY, "early", LEASE_S))  # not expired yet
    compute = Compute("taker", seconds=0.5)
    waiters = [_start(_get, storage, scope, owner, compute) for owner in ["w1", "w2", "w3"]]
    results = [f.result(WAIT_S) for f in waiters]
    assert compute.calls == 1
    assert sorted(computed for _, computed in results) == [False, False, True]
    assert all(marker["checkpoint"] == "/ckpt/taker" for marker, _ in results)
    assert ray.get(actor.stats.remote("inv1")) == {"computed": {STAGE: [KEY]}, "hits": {STAGE: 2}}
    # the dead owner, were it to finish after all, holds nothing and counts nothing
    assert not ray.get(actor.finish.remote(KEY, STAGE, True, "dead", "inv1"))


def test_a_live_owner_keeps_its_lease(cache):
    storage, scope, actor = cache
    compute = Compute("owner", seconds=3 * LEASE_S)
    intruder = []
    owner = _start(_get, storage, scope, "owner", compute)
    assert compute.started.wait(WAIT_S)
    waiter = _start(_get, storage, scope, "waiter", Compute("waiter"))
    time.sleep(2 * LEASE_S)  # past one lease: only the heartbeat keeps it
    intruder.append(ray.get(actor.claim.remote(KEY, "intruder", LEASE_S)))
    results = [owner.result(WAIT_S), waiter.result(WAIT_S)]
    assert intruder == [False]
    assert compute.calls == 1
    assert [computed for _, computed in results] == [True, False]
    assert results[1][0]["checkpoint"] == "/ckpt/owner"


def test_a_failed_producer_releases_at_once(cache):
    storage, scope, actor = cache
    with pytest.raises(RuntimeError, match="bad failed"):
        _get(storage, scope, "bad", Compute("bad", fail=True))
    marker, computed = _get(storage, scope, "next", Compute("next"))  # no lease to wait out
    assert computed and marker["checkpoint"] == "/ckpt/next"


def _silent(monkeypatch, owner):
    """``owner``'s heartbeat sends nothing: alive, it loses its lease after ``LEASE_S``."""
    run = stage_cache._Heartbeat._run
    monkeypatch.setattr(
        stage_cache._Heartbeat, "_run", lambda self: None if self.owner == owner else run(self)
    )


def test_a_producer_that_lost_its_lease_keeps_the_new_holders_marker(cache, monkeypatch, caplog):
    storage, scope, actor = cache
    _silent(monkeypatch, "slow")
    slow, taker = Compute("slow", seconds=3 * LEASE_S), Compute("taker", seconds=4 * LEASE_S)
    with caplog.at_level(logging.WARNING, logger=stage_cache.__name__):
        first = _start(_get, storage, scope, "slow", slow)
        assert slow.started.wait(WAIT_S)
        second = _start(_get, storage, scope, "taker", taker)
        assert taker.started.wait(WAIT_S)  # took over the expired lease while "slow" computed
        slow_marker, slow_computed = first.result(WAIT_S)
        taker_marker, taker_computed = second.result(WAIT_S)
    assert (slow_computed, taker_computed) == (False, True)
    assert slow_marker == taker_marker == stage_cache.read_marker(storage, KEY)
    assert slow_marker["checkpoint"] == "/ckpt/taker"  # the later finisher wrote nothing
    assert any(
        "slow lost its lease" in r.getMessage() and KEY in r.getMessage() for r in caplog.records
    )
    assert ray.get(actor.stats.remote("inv1")) == {"computed": {STAGE: [KEY]}, "hits": {STAGE: 1}}


def test_a_producer_that_lost_its_lease_publishes_when_the_taker_fails(cache, monkeypatch):
    storage, scope, actor = cache
    _silent(monkeypatch, "slow")
    slow, taker = Compute("slow", seconds=3 * LEASE_S), Compute("taker", seconds=0.2, fail=True)
    first = _start(_get, storage, scope, "slow", slow)
    assert slow.started.wait(WAIT_S)
    time.sleep(1.5 * LEASE_S)
    with pytest.raises(RuntimeError, match="taker failed"):
        _get(storage, scope, "taker", taker)  # took over, failed, released
    marker, computed = first.result(WAIT_S)
    assert computed and marker["checkpoint"] == "/ckpt/slow"
    assert stage_cache.read_marker(storage, KEY) == marker
    assert ray.get(actor.stats.remote("inv1"))["computed"] == {STAGE: [KEY]}


def test_a_torn_marker_is_computed_again(cache, caplog):
    storage, scope, _ = cache
    entry = os.path.join(storage, "stage_cache", KEY)
    os.makedirs(entry)
    with open(os.path.join(entry, stage_cache.MARKER), "w") as f:
        f.write('{"checkpoint": "/ckpt/to')  # a write cut short
    with caplog.at_level(logging.WARNING, logger=stage_cache.__name__):
        assert stage_cache.read_marker(storage, KEY) is None
    assert any(KEY in r.getMessage() and "torn" in r.getMessage() for r in caplog.records)
    marker, computed = _get(storage, scope, "a", Compute("again"))
    assert computed and stage_cache.read_marker(storage, KEY) == marker


def test_the_coordinator_is_one_per_storage_with_counts_per_invocation(cache, tmp_path):
    storage, scope, actor = cache
    again, _ = stage_cache.start_coordinator(f"file://{storage}/", "inv2", lease_s=LEASE_S)
    other = stage_cache.coordinator_name(str(tmp_path / "elsewhere"))
    assert again.actor == scope.actor != other and again.invocation == "inv2"
    assert ray.get_actor(scope.actor, namespace=stage_cache.NAMESPACE)._actor_id == actor._actor_id
    _get(storage, scope, "a", Compute("a"))
    _, computed = _get(storage, again, "b", Compute("b"))  # another sweep on the same storage
    assert not computed
    assert ray.get(actor.stats.remote("inv1")) == {"computed": {STAGE: [KEY]}, "hits": {}}
    assert ray.get(actor.stats.remote("inv2")) == {"computed": {}, "hits": {STAGE: 1}}


def test_local_marker_writes_are_atomic(tmp_path, monkeypatch):
    storage = str(tmp_path)
    big = {"checkpoint": "/ckpt/x", "history": [{"epoch": i, "loss": 0.5} for i in range(20000)]}
    path = os.path.join(storage, "stage_cache", KEY, stage_cache.MARKER)
    stage_cache.write_marker(storage, KEY, big)
    torn, done = [], threading.Event()

    def read():
        while not done.is_set():
            with open(path, "rb") as f:
                data = f.read()
            try:
                json.loads(data)
            except ValueError:
                torn.append(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(30):
        stage_cache.write_marker(storage, KEY, {**big, "checkpoint": f"/ckpt/{i}"})
    done.set()
    reader.join()
    assert torn == []
    assert stage_cache.read_marker(storage, KEY)["checkpoint"] == "/ckpt/29"
    assert os.listdir(os.path.dirname(path)) == [stage_cache.MARKER]  # no temporary file left

    def crash(*args):
        raise OSError("the disk went away")

    monkeypatch.setattr(storage_mod.os, "replace", crash)
    with pytest.raises(OSError, match="the disk went away"):
        stage_cache.write_marker(storage, KEY, {"checkpoint": "/ckpt/never"})
    assert stage_cache.read_marker(storage, KEY)["checkpoint"] == "/ckpt/29"
    assert os.listdir(os.path.dirname(path)) == [stage_cache.MARKER]


def test_entries_ignore_marker_temp_files(tmp_path):
    entry = tmp_path / "stage_cache" / KEY
    entry.mkdir(parents=True)
    (entry / "weights.pt").write_bytes(b"0" * 100)
    (entry / f"{stage_cache.MARKER}.0123abcd{storage_mod.TMP_SUFFIX}").write_bytes(
        b'{"stage": "pre'
    )
    [found] = stage_cache.entries(str(tmp_path))
    assert found["key"] == KEY and found["complete"] is False and found["size"] == 100


# --- a real S3 API: moto's server on 127.0.0.1 -------------------------------------------


@pytest.fixture()
def s3(s3_server, s3_bucket):
    """``s3://<a fresh bucket>/prefix`` on the local S3 server, a boto3 client and the bucket."""
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    return f"{s3_bucket}/prefix", boto3.client("s3", endpoint_url=s3_server), bucket


def test_s3_markers_are_one_put(s3, caplog):
    storage, client, bucket = s3
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        stage_cache.write_marker(storage, KEY, {"checkpoint": f"{storage}/ckpt/x", "stage": STAGE})
    requests = [
        r.getMessage()
        for r in caplog.records
        if f"/prefix/stage_cache/{KEY}/{stage_cache.MARKER}" in r.getMessage()
    ]
    assert len(requests) == 1 and "PUT " in requests[0] and "uploads" not in requests[0], requests
    assert stage_cache.read_marker(storage, KEY) == {
        "checkpoint": f"{storage}/ckpt/x",
        "stage": STAGE,
    }
    client.put_object(
        Bucket=bucket, Key=f"prefix/stage_cache/torn/{stage_cache.MARKER}", Body=b'{"checkpoint"'
    )
    assert stage_cache.read_marker(storage, "torn") is None
    assert stage_cache.read_marker(storage, "absent") is None


def test_s3_get_or_compute(s3, ray_session):
    storage, client, bucket = s3
    scope, actor = stage_cache.start_coordinator(storage, "inv1", lease_s=LEASE_S)
    try:
        compute = Compute("s3")
        trials = [_start(_get, storage, scope, owner, compute) for owner in ["a", "b"]]
        results = [f.result(WAIT_S) for f in trials]
        assert compute.calls == 1 and sorted(c for _, c in results) == [False, True]
        assert ray.get(actor.stats.remote("inv1")) == {
            "computed": {STAGE: [KEY]},
            "hits": {STAGE: 1},
        }
    finally:
        ray.kill(actor)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"prefix/stage_cache/{KEY}/{stage_cache.MARKER}" in keys
    assert [e["key"] for e in stage_cache.entries(storage) if e["complete"]] == [KEY]
