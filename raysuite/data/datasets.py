"""Ingest a dataset root into a manifest, and find (or build) the manifest a sweep uses."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raysuite.data import formats, manifest, privacy, synth
from raysuite.data.ingest import LayoutError, Ledger, default_workers


@dataclass(frozen=True)
class SplitOptions:
    """Patient-level split written into the manifest: ratios (train, val, test) and,
    optionally, K >= 2 folds. Checked when built (:class:`ManifestError`), so a bad split
    fails before any file is decoded."""

    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    folds: int | None = None

    def __post_init__(self) -> None:
        ratios = tuple(self.ratios)
        if (
            len(ratios) != 3
            or not all(isinstance(r, int | float) and math.isfinite(r) and r >= 0 for r in ratios)
            or abs(sum(ratios) - 1) > 1e-6
        ):
            raise manifest.ManifestError(
                f"split ratios {list(ratios)} must be three non-negative numbers summing to 1"
            )
        if self.folds is not None and self.folds < 2:
            raise manifest.ManifestError(f"folds must be >= 2, got {self.folds}")
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))

    @classmethod
    def of(cls, data: dict[str, Any]) -> SplitOptions:
        """The split of a spec's ``data`` section (``data.split``; defaults when unset)."""
        split = data.get("split") or {}
        default = cls()
        return cls(
            ratios=tuple(split.get("ratios", default.ratios)),
            seed=int(split.get("seed", default.seed)),
            folds=split.get("folds"),
        )


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
    fmt: str,
    root: str | Path,
    out: str | Path,
    workers: int | None = None,
    split: SplitOptions | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Ingest ``root`` (layout ``fmt``) into the manifest ``out`` and its error table,
    reporting decoding progress on stderr unless ``progress`` is false.

    Returns the counts (found, ingested, failed, failed_by_reason) and the content hash.
    Raises :class:`~raysuite.data.privacy.SaltError` before reading anything when the salt
    is unusable, and :class:`LayoutError` when ``root`` is not the layout or when every
    sample failed (the error table is written first; no manifest is).
    """
    privacy.check_salt()
    root = Path(root).resolve()
    if not root.is_dir():
        raise LayoutError(root, "dataset root is not a directory")
    split = split or SplitOptions()
    ledger = Ledger(root=root, progress=progress)
    formats.get(fmt).ingest(root, ledger, workers=workers or default_workers())
    if not ledger.rows and not ledger.errors:
        raise LayoutError(root, f"no {fmt} samples found under this root")
    errors = ledger.error_frame()
    tmp = errors_path(out).with_name(f".{errors_path(out).name}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    errors.to_parquet(tmp, index=False)
    tmp.replace(errors_path(out))
    counts = ledger.counts()
    assert counts["found"] == counts["ingested"] + counts["failed"]
    if not ledger.rows:
        reason, n = Counter(errors.reason).most_common(1)[0]
        raise LayoutError(
            root,
            f"all {counts['failed']} samples failed; most common reason {reason} ({n}); "
            f"see {errors_path(out)}",
        )
    df = apply_split(manifest.frame(ledger.rows), split)
    digest = manifest.write(df, out, fmt, root)
    return {**counts, "hash": digest}


def default_manifest_path(data: dict[str, Any]) -> Path:
    """Where a sweep keeps the manifest of ``data.root`` when ``data.manifest`` is unset:
    ``<data.cache_dir or $RAYSUITE_CACHE>/manifests/<format>-<key>.parquet``, the key a
    hash of the resolved root, the format and the split (ratios, seed, folds), so changing
    ``data.split`` ingests a new manifest instead of reusing the old split."""
    from raysuite.data.cache import default_cache_dir

    identity = {
        "root": str(Path(data["root"]).resolve()),
        "format": data["format"],
        "split": asdict(SplitOptions.of(data)),
    }
    key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
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
                synth.get(data["format"]).synth(root, cases=data.get("synthetic_cases") or default_cases, seed=0)
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
                run_ingest(data["format"], data["root"], path, split=SplitOptions.of(data))
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
