"""Stage cache: a stage's output stored once under its content key, shared by every trial.

Entries live at ``<storage>/stage_cache/<key>/`` (local path, shared filesystem or any
URI pyarrow understands, e.g. ``s3://``). A ``_COMPLETE.json`` marker names the checkpoint.

One coordinator actor per storage (:func:`start_coordinator`: detached, named from a hash of
the storage URI) hands out *leases*, so that of the trials of every sweep sharing a storage
(and so its entries) only one computes a key while the others wait for its marker:

- the producer's lease lasts ``lease_s`` after its last heartbeat; a thread renews it every
  ``lease_s / 4`` while the stage computes. A producer that dies (killed, out of memory,
  its node lost) stops renewing, and within ``lease_s`` plus one poll one waiter takes over;
  the others go on waiting.
- a producer that fails releases its lease at once, and the next waiter computes.
- a producer that *lost* its lease while alive (no heartbeat reached the coordinator for
  ``lease_s``, and a waiter took over) logs a warning, and once its own computation ends
  writes no marker while another trial holds the lease: it returns the new holder's marker
  when that appears, and publishes its own result only if it gets the lease back (the
  new holder failed or died). Every marker is written by a lease holder, so a key's marker
  is written once, and a later finisher never replaces it.

Markers are written atomically: a temporary file renamed over the final name on local and
shared filesystems, a single PUT on object stores. A torn or invalid marker reads as absent
(the stage is computed again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import ray

from raysuite.storage import filesystem, is_partial, join, read_bytes, uri_of, write_atomic

HEAD = "node:__internal_head__"  # a resource only the head node has: what must outlive worker nodes
COORDINATOR = "raysuite-stage-cache"
NAMESPACE = "raysuite"
MARKER = "_COMPLETE.json"
RENEWALS_PER_LEASE = 4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scope:
    """Where a trial's stage-cache claims go: the coordinator actor's name (in
    :data:`NAMESPACE`), the sweep invocation its counts are kept under, and the lease length."""

    actor: str
    invocation: str
    lease_s: float = 180.0


@dataclass
class _Lease:
    owner: str
    beat: float  # the coordinator's clock (time.monotonic) at the last claim or renewal
    lease_s: float


@ray.remote(num_cpus=0, max_restarts=-1)
class StageCacheCoordinator:
    """Leases on stage-cache keys and, per sweep invocation, the keys computed and the hits.

    Lease times are the actor's own monotonic clock: no two machines' clocks are compared.
    Restarted (its process died), it has forgotten every lease: a producer then sees its
    lease lost and the next claimant of the key computes it again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # a test passes its own: Ray may rebuild this class by value
        self.leases: dict[str, _Lease] = {}
        self.computed: dict[str, dict[str, list[str]]] = {}  # invocation -> stage -> keys
        self.hits: dict[str, dict[str, int]] = {}  # invocation -> stage -> hits

    def claim(self, key: str, owner: str, lease_s: float) -> bool:
        """True when ``owner`` now holds the lease on ``key``: nobody held it, the holder's
        lease expired (no heartbeat for its ``lease_s``), or ``owner`` already held it."""
        held = self.leases.get(key)
        now = self.clock()
        if held is not None and held.owner != owner and now - held.beat <= held.lease_s:
            return False
        self.leases[key] = _Lease(owner, now, lease_s)
        return True

    def renew(self, key: str, owner: str) -> bool:
        """Extend ``owner``'s lease on ``key``; False when ``owner`` no longer holds it."""
        held = self.leases.get(key)
        if held is None or held.owner != owner:
            return False
        held.beat = self.clock()
        return True

    def finish(self, key: str, stage: str, ok: bool, owner: str, invocation: str) -> bool:
        """Release ``owner``'s lease on ``key`` and, when ``ok``, count the key as computed by
        ``invocation``. False (and nothing changes) when ``owner`` does not hold the lease."""
        held = self.leases.get(key)
        if held is None or held.owner != owner:
            return False
        del self.leases[key]
        if ok:
            self.computed.setdefault(invocation, {}).setdefault(stage, []).append(key)
        return True

    def hit(self, stage: str, invocation: str) -> None:
        hits = self.hits.setdefault(invocation, {})
        hits[stage] = hits.get(stage, 0) + 1

    def stats(self, invocation: str) -> dict[str, Any]:
        """This invocation's ``{"computed": {stage: [keys]}, "hits": {stage: n}}``."""
        computed = self.computed.get(invocation, {})
        return {
            "computed": {s: list(k) for s, k in computed.items()},
            "hits": dict(self.hits.get(invocation, {})),
        }


def coordinator_name(storage: str) -> str:
    """The coordinator's actor name for ``storage``: the same for every spelling of a local
    path (relative, ``file://``) and for every sweep on that storage."""
    uri = uri_of(storage).rstrip("/")
    return f"{COORDINATOR}-{hashlib.sha256(uri.encode()).hexdigest()[:16]}"


def start_coordinator(storage: str, invocation: str, lease_s: float = 180.0) -> tuple[Scope, Any]:
    """The storage's coordinator (started now, or the one another sweep started) and the
    :class:`Scope` the trials of ``invocation`` pass to :func:`get_or_compute`. Detached:
    it outlives this sweep, as the leases of trials of other sweeps on the storage must."""
    name = coordinator_name(storage)
    actor = StageCacheCoordinator.options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, resources={HEAD: 0.001}
    ).remote()
    return Scope(name, invocation, lease_s), actor


def entry_uri(storage: str, key: str) -> str:
    return join(storage, "stage_cache", key)


def read_marker(storage: str, key: str) -> dict[str, Any] | None:
    """The marker of ``key``, or None when there is none or it is not a valid JSON object (a
    write torn by a crash, logged): the stage is then computed again."""
    data = read_bytes(join(entry_uri(storage, key), MARKER))
    if data is None:
        return None
    try:
        marker = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        marker = None
    if not isinstance(marker, dict):
        log.warning(
            "stage cache: the marker of key %s is torn or invalid (%d bytes); treated as absent",
            key,
            len(data),
        )
        return None
    return marker


def write_marker(storage: str, key: str, content: dict[str, Any]) -> None:
    """Write the marker of ``key`` atomically (:func:`raysuite.storage.write_atomic`):
    readers see the old marker (or none) or the whole new one."""
    write_atomic(join(entry_uri(storage, key), MARKER), json.dumps(content).encode())


class _Heartbeat:
    """Renews ``owner``'s lease on ``key`` every ``lease_s / 4`` from a daemon thread until
    :meth:`stop`. A renewal the coordinator refuses (another owner took over) sets ``lost``
    and ends the thread; one that fails (the coordinator unreachable) is retried."""

    def __init__(self, actor: Any, key: str, owner: str, lease_s: float) -> None:
        self.actor, self.key, self.owner = actor, key, owner
        self.interval = lease_s / RENEWALS_PER_LEASE
        self.lost = threading.Event()
        self._stopped = threading.Event()
        name = f"raysuite-lease-{key[:12]}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                held = ray.get(self.actor.renew.remote(self.key, self.owner), timeout=self.interval)
            except Exception as err:  # the next renewal may get through
                log.warning(
                    "stage cache: %s could not renew its lease on key %s (%s); retrying",
                    self.owner,
                    self.key,
                    type(err).__name__,
                )
                continue
            if self._stopped.is_set():  # a renewal crossing the release: nothing was lost
                return
            if not held:
                self.lost.set()
                log.warning(
                    "stage cache: %s lost its lease on key %s: no heartbeat reached the "
                    "coordinator in time and another trial took over",
                    self.owner,
                    self.key,
                )
                return

    def stop(self) -> None:
        """No renewal after this one returns (one in flight is ignored)."""
        self._stopped.set()


def get_or_compute(
    storage: str,
    key: str,
    stage: str,
    owner: str,
    compute: Callable[[], dict[str, Any]],
    scope: Scope | None,
    poll_s: float = 2.0,
) -> tuple[dict[str, Any], bool]:
    """The stage's marker (``checkpoint`` URI, ``history``) and whether this call computed it.

    ``owner`` names one live process at a time (a trial's run name: a retried trial takes its
    own lease back at once). Waiters poll every ``poll_s``. Without a scope (``raysuite
    train``: one trial, nobody to share with) it computes on a miss directly."""
    if scope is None:
        marker = read_marker(storage, key)
        if marker is not None:
            return marker, False
        marker = compute()
        write_marker(storage, key, marker)
        return marker, True
    actor = ray.get_actor(scope.actor, namespace=NAMESPACE)
    while True:
        marker = read_marker(storage, key)
        if marker is not None:
            ray.get(actor.hit.remote(stage, scope.invocation))
            return marker, False
        if ray.get(actor.claim.remote(key, owner, scope.lease_s)):
            return _produce(actor, storage, key, stage, owner, compute, scope, poll_s)
        time.sleep(poll_s)


def _produce(
    actor: Any, storage: str, key: str, stage: str, owner: str, compute: Callable[[], dict[str, Any]],
    scope: Scope, poll_s: float,
) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """Compute ``key`` under ``owner``'s lease, kept alive by a heartbeat, and publish it."""
    beat = _Heartbeat(actor, key, owner, scope.lease_s)
    try:
        marker = compute()
    except BaseException:
        beat.stop()
        ray.get(actor.finish.remote(key, stage, False, owner, scope.invocation))
        raise
    beat.stop()
    # The lease is checked (and extended) just before the write: only its holder writes.
    held = not beat.lost.is_set() and ray.get(actor.renew.remote(key, owner))
    if not held:
        log.warning(
            "stage cache: %s lost its lease on key %s while computing it; it writes no marker "
            "while another trial holds the lease, and uses that trial's",
            owner,
            key,
        )
    while not held:
        current = read_marker(storage, key)
        if current is not None:  # the trial that took over published first: that is the entry
            ray.get(actor.hit.remote(stage, scope.invocation))
            return current, False
        held = ray.get(actor.claim.remote(key, owner, scope.lease_s))  # it failed or died
        if not held:
            time.sleep(poll_s)
    try:
        write_marker(storage, key, marker)
    except BaseException:
        ray.get(actor.finish.remote(key, stage, False, owner, scope.invocation))
        raise
    ray.get(actor.finish.remote(key, stage, True, owner, scope.invocation))
    return marker, True


def describe(spec: Any, plan: Any, stage: str) -> dict[str, Any]:
    """What ``raysuite cache ls`` shows of an entry, stored in its marker: the method and
    stage, the code fingerprint it was computed with (``--stale`` compares it with today's),
    the world size, the sweep and when it was written."""
    from raysuite.plan import code_fingerprint, stage_world_size

    return {"method": spec.method, "code": code_fingerprint(spec.method), "world_size": stage_world_size(spec, stage),
            "sweep": spec.name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip


def entries(storage: str) -> list[dict[str, Any]]:
    """Every entry under ``<storage>/stage_cache``: key, method, stage, sweep, created, size
    (bytes), complete (has a marker) and stale (computed by other code than today's, or of a
    method this raysuite does not have). Entries without a marker are a computation that
    died or is under way. A marker's temporary file (a write under way or cut short) is
    neither a marker nor part of the size."""
    from raysuite.methods import METHODS
    from raysuite.plan import code_fingerprint

    fs, root = filesystem(join(storage, "stage_cache"))
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory or info.base_name == "faults":
            continue
        marker = read_marker(storage, info.base_name) or {}
        files = fs.get_file_info(pafs.FileSelector(info.path, recursive=True))
        method = marker.get("method")
        current = code_fingerprint(method) if isinstance(method, str) and method in METHODS else None
        out.append({
            "key": info.base_name, "method": method, "stage": marker.get("stage"), "sweep": marker.get("sweep"),
            "created": marker.get("created"), "size": sum(f.size or 0 for f in files if f.type == pafs.FileType.File and not is_partial(f.base_name)),
            "complete": bool(marker), "stale": bool(marker) and marker.get("code") != current,
        })  # fmt: skip
    return sorted(out, key=lambda e: (str(e["created"]), e["key"]))


def remove(storage: str, key: str) -> None:
    """Delete the entry ``key`` (its marker, checkpoints and Train run state)."""
    fs, path = filesystem(entry_uri(storage, key))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise KeyError(key)
    fs.delete_dir(path)
