"""Ingest a dataset root into a manifest, and find (or build) the manifest a sweep uses."""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raysuite.data import formats, manifest
from raysuite.data.ingest import LayoutError, Ledger, default_workers


@dataclass(frozen=True)
class SplitOptions:
    """Patient-level split written into the manifest: ratios (train, val, test) or folds."""

    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    folds: int | None = None


def errors_path(manifest_path: str | Path) -> Path:
    """``m.parquet`` -> ``m.errors.parquet`` (the error table beside the manifest)."""
    p = Path(manifest_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".errors.parquet")


def apply_split(df: pd.DataFrame, split: SplitOptions) -> pd.DataFrame:
    df = manifest.assign_splits(df, split.ratios, split.seed)
    if split.folds:
        df = manifest.assign_folds(df, split.folds, split.seed)
    return df


def run_ingest(
    fmt: str, root: str | Path, out: str | Path, workers: int | None = None, split: SplitOptions | None = None
) -> dict[str, Any]:
    """Ingest ``root`` (layout ``fmt``) into the manifest ``out`` and its error table.

    Returns the counts (found, ingested, failed, failed_by_reason) and the content hash.
    Raises :class:`LayoutError` when ``root`` is not the layout.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise LayoutError(root, "dataset root is not a directory")
    ledger = Ledger(root=root)
    formats.get(fmt).ingest(root, ledger, workers=workers or default_workers())
    if not ledger.rows and not ledger.errors:
        raise LayoutError(root, f"no {fmt} samples found under this root")
    df = manifest.frame(ledger.rows)
    if len(df):
        df = apply_split(df, split or SplitOptions())
    digest = manifest.write(df, out, fmt, root)
    errors = ledger.error_frame()
    tmp = errors_path(out).with_name(f".{errors_path(out).name}.tmp")
    errors.to_parquet(tmp, index=False)
    tmp.replace(errors_path(out))
    counts = ledger.counts()
    assert counts["found"] == counts["ingested"] + counts["failed"]
    return {**counts, "hash": digest}


def default_manifest_path(data: dict[str, Any]) -> Path:
    """Where a sweep keeps the manifest of ``data.root`` when ``data.manifest`` is unset:
    ``<data.cache_dir or $RAYSUITE_CACHE>/manifests/<format>-<hash of the root path>.parquet``."""
    from raysuite.data.cache import default_cache_dir

    key = hashlib.sha1(str(Path(data["root"]).resolve()).encode()).hexdigest()[:12]
    return Path(data.get("cache_dir") or default_cache_dir()) / "manifests" / f"{data['format']}-{key}.parquet"


def prepare(data: dict[str, Any], present: Callable[[Path], bool], default_cases: int) -> None:
    """Make the spec's ``data`` usable: when ``present(root)`` is false, synthesise the
    format's layout (``data.synthetic_if_missing``; ``data.synthetic_cases`` or
    ``default_cases``), then ingest the manifest once. Deterministic and guarded by lock
    files, so every node of a cluster may call it."""
    root = Path(data["root"])
    if not ((root / ".raysuite-complete").exists() or (root.is_dir() and present(root))):
        if not data.get("synthetic_if_missing"):
            raise FileNotFoundError(
                f"{root}: no {data['format']} data (set data.synthetic_if_missing: true to synthesise)"
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(str(root) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (root / ".raysuite-complete").exists():
                formats.get(data["format"]).synth(root, cases=data.get("synthetic_cases") or default_cases, seed=0)
                (root / ".raysuite-complete").write_text("synthetic\n")
    ensure_manifest(data)


def manifest_path(data: dict[str, Any]) -> Path:
    """``data.manifest``, or the default beside the cache (see :func:`default_manifest_path`)."""
    return Path(data.get("manifest") or default_manifest_path(data))


def ensure_manifest(data: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The manifest of the spec's ``data`` section, ingesting ``data.root`` once when the
    file does not exist yet (under a lock, so concurrent trials ingest once)."""
    path = manifest_path(data)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                split = data.get("split") or {}
                run_ingest(
                    data["format"],
                    data["root"],
                    path,
                    split=SplitOptions(
                        ratios=tuple(split.get("ratios", (0.7, 0.1, 0.2))),
                        seed=split.get("seed", 0),
                        folds=split.get("folds"),
                    ),
                )
    df, meta = _read_once(path)
    if meta.get("format") != data["format"]:
        raise LayoutError(path, f"manifest holds format {meta.get('format')!r}, the spec says {data['format']!r}")
    return df.copy(), dict(meta)


_READ: dict[Path, tuple[tuple[int, int], pd.DataFrame, dict[str, str]]] = {}


def _read_once(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """``manifest.read`` once per process and file version (plan() and every recipe ask
    for the manifest; a re-ingest replaces the file, changing its mtime)."""
    stat = path.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    cached = _READ.get(path)
    if cached is None or cached[0] != version:
        cached = (version, *manifest.read(path))
        _READ[path] = cached
    return cached[1], cached[2]
