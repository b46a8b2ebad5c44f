"""Pretrained weights of a sweep, resolved once by the driver before any trial.

Every configuration's :class:`~raysuite.methods.nn.pretrained.Need` (a ``<stage>.<field>``
naming ``imagenet``, ``coco``, a library source or a file) is looked up in the library's
cache (downloaded into it when missing and allowed), checked against its architecture, and
copied into ``<storage>/weights/<arch>-<sha>/state_dict.pt`` (local, shared filesystem or
any URI pyarrow understands), so N workers on N nodes read one copy instead of downloading
N times. A configuration whose weights cannot be had is skipped with the reason (in
``skipped.txt`` and the report), never trained from scratch in silence. No Ray here.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from raysuite.methods import METHODS
from raysuite.methods.ledger import lookup
from raysuite.methods.nn import pretrained
from raysuite.methods.nn.pretrained import STATE_FILE, Need, WeightsUnavailable
from raysuite.plan import all_points
from raysuite.spec import Spec, resolve_stage_configs
from raysuite.storage import filesystem, join


def ref(arch: str, value: str) -> str:
    """The resolution's key of one (architecture, value) pair."""
    return f"{arch}|{value}"


@dataclass
class Resolution:
    """``files``: ref -> stored directory (holding :data:`STATE_FILE`); ``unavailable``:
    ref -> why it cannot be had; ``origin``: ref -> the file it came from (plans)."""

    files: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def reason(self, spec: Spec, configs: dict[str, dict[str, Any]]) -> str | None:
        """Why a configuration cannot run: the first of its weights that is unavailable."""
        for need, value in needs(spec, configs):
            problem = self.unavailable.get(ref(need.arch, value))
            if problem:
                return f"{need.key}={value}: {problem}"
        return None

    def for_trial(self, spec: Spec, configs: dict[str, dict[str, Any]]) -> dict[str, str]:
        """``<stage>.<field>`` -> stored directory of each resolved need of a configuration."""
        out = {}
        for need, value in needs(spec, configs):
            stored = self.files.get(ref(need.arch, value))
            if stored:
                out[need.key] = stored
        return out


def needs(spec: Spec, configs: dict[str, dict[str, Any]]) -> list[tuple[Need, str]]:
    """The configuration's pretrained fields that name weights (``none`` left out)."""
    out = []
    for need in METHODS[spec.method].pretrained(configs):
        value = lookup(configs, need.key)
        if value and value != pretrained.NONE:
            out.append((need, str(value)))
    return out


def every_need(spec: Spec) -> list[tuple[Need, str]]:
    """Distinct (need, value) pairs over every configuration of the sweep (arms x grid)."""
    seen: dict[tuple[Need, str], None] = {}
    for point in all_points(spec):
        for pair in needs(spec, resolve_stage_configs(spec, point, where="search")):
            seen.setdefault(pair)
    return list(seen)


def resolve(spec: Spec, storage: str | None, download: bool = True) -> Resolution:
    """Resolve every need of ``spec`` (see the module doc). With ``storage`` None nothing is
    copied (``raysuite plan``): ``files`` then holds the local file of each need."""
    out = Resolution()
    for need, value in every_need(spec):
        key = ref(need.arch, value)
        if key in out.files or key in out.unavailable:  # two fields, one file (resolved once)
            continue
        try:
            path = pretrained.local_file(need.arch, value, download=download)
            assert path is not None
            state = pretrained.check_fit(need.arch, path)
        except WeightsUnavailable as err:
            out.unavailable[key] = str(err)
            continue
        out.origin[key] = str(path)
        out.files[key] = str(path) if storage is None else store(state, path, need.arch, storage)
    return out


def store(state: dict[str, torch.Tensor], path: Path, arch: str, storage: str) -> str:
    """Copy ``state`` (read from ``path``) to ``<storage>/weights/<arch>-<sha of path>/``
    unless an earlier sweep did; returns that directory's URI."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    uri = join(storage, "weights", f"{arch}-{digest.hexdigest()[:16]}")
    fs, base = filesystem(uri)
    if fs.get_file_info(f"{base}/{STATE_FILE}").type == pafs.FileType.File:
        return uri
    fs.create_dir(base, recursive=True)
    with tempfile.TemporaryDirectory(prefix="raysuite-weights-") as tmp:
        local = Path(tmp) / STATE_FILE
        torch.save(state, local)
        partial = f"{base}/{STATE_FILE}.partial"
        pafs.copy_files(
            str(local), partial, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
        )
        fs.move(partial, f"{base}/{STATE_FILE}")
    return uri
