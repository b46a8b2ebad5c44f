"""Stage cache: a stage's output stored once under its content key, shared by every trial.

Entries live at ``<storage>/stage_cache/<key>/`` (local path, shared filesystem or any
URI pyarrow understands, e.g. ``s3://``). A ``_COMPLETE.json`` marker names the checkpoint.
A named coordinator actor, owned by the sweep driver, makes sure only one trial computes
a key while the others wait for it; a trial that fails to compute releases the claim.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs
import ray

COORDINATOR = "raysuite-stage-cache"
MARKER = "_COMPLETE.json"


@ray.remote(num_cpus=0)
class StageCacheCoordinator:
    def __init__(self) -> None:
        self.claims: dict[str, str] = {}
        self.computed: dict[str, list[str]] = {}
        self.hits: dict[str, int] = {}

    def claim(self, key: str, owner: str) -> bool:
        """True when ``owner`` should compute ``key`` (nobody else is computing it)."""
        holder = self.claims.setdefault(key, owner)
        return holder == owner

    def finish(self, key: str, stage: str, ok: bool) -> None:
        self.claims.pop(key, None)
        if ok:
            self.computed.setdefault(stage, []).append(key)

    def hit(self, stage: str) -> None:
        self.hits[stage] = self.hits.get(stage, 0) + 1

    def stats(self) -> dict[str, Any]:
        return {"computed": self.computed, "hits": self.hits}


def entry_uri(storage: str, key: str) -> str:
    return f"{storage.rstrip('/')}/stage_cache/{key}"


def read_marker(storage: str, key: str) -> dict[str, Any] | None:
    fs, path = pafs.FileSystem.from_uri(_uri(entry_uri(storage, key)))
    info = fs.get_file_info(f"{path}/{MARKER}")
    if info.type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(f"{path}/{MARKER}") as f:
        return json.loads(f.read().decode())


def write_marker(storage: str, key: str, content: dict[str, Any]) -> None:
    fs, path = pafs.FileSystem.from_uri(_uri(entry_uri(storage, key)))
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{MARKER}") as f:
        f.write(json.dumps(content).encode())


def _uri(path: str) -> str:
    return path if "://" in path else f"file://{path}"


def get_or_compute(
    storage: str,
    key: str,
    stage: str,
    owner: str,
    compute: Callable[[], dict[str, Any]],
    coordinator_name: str | None,
    poll_s: float = 2.0,
) -> tuple[dict[str, Any], bool]:
    """The stage's marker (``checkpoint`` path, ``history``) and whether this call computed it.

    Without a coordinator (``raysuite train``: one trial, nobody to share with) it computes
    on a miss directly."""
    coordinator = ray.get_actor(coordinator_name) if coordinator_name else None
    while True:
        marker = read_marker(storage, key)
        if marker is not None:
            if coordinator is not None:
                ray.get(coordinator.hit.remote(stage))
            return marker, False
        if coordinator is None or ray.get(coordinator.claim.remote(key, owner)):
            try:
                marker = compute()
                write_marker(storage, key, marker)
            except BaseException:
                if coordinator is not None:
                    ray.get(coordinator.finish.remote(key, stage, False))
                raise
            if coordinator is not None:
                ray.get(coordinator.finish.remote(key, stage, True))
            return marker, True
        time.sleep(poll_s)


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
    died or is under way."""
    from raysuite.methods import MODULES
    from raysuite.plan import code_fingerprint

    fs, root = pafs.FileSystem.from_uri(_uri(f"{storage.rstrip('/')}/stage_cache"))
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory or info.base_name == "faults":
            continue
        marker = read_marker(storage, info.base_name) or {}
        files = fs.get_file_info(pafs.FileSelector(info.path, recursive=True))
        method = marker.get("method")
        current = code_fingerprint(method) if method in MODULES else None
        out.append({
            "key": info.base_name, "method": method, "stage": marker.get("stage"), "sweep": marker.get("sweep"),
            "created": marker.get("created"), "size": sum(f.size or 0 for f in files if f.type == pafs.FileType.File),
            "complete": bool(marker), "stale": bool(marker) and marker.get("code") != current,
        })  # fmt: skip
    return sorted(out, key=lambda e: (str(e["created"]), e["key"]))


def remove(storage: str, key: str) -> None:
    """Delete the entry ``key`` (its marker, checkpoints and Train run state)."""
    fs, path = pafs.FileSystem.from_uri(_uri(entry_uri(storage, key)))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise KeyError(key)
    fs.delete_dir(path)


def start_coordinator(sweep: str) -> tuple[str, Any]:
    name = f"{COORDINATOR}-{sweep}"
    return name, StageCacheCoordinator.options(name=name, get_if_exists=True).remote()
