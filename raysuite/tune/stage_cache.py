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


def start_coordinator(sweep: str) -> tuple[str, Any]:
    name = f"{COORDINATOR}-{sweep}"
    return name, StageCacheCoordinator.options(name=name, get_if_exists=True).remote()
