"""The ingest ledger: every sample a layout names is either ingested or recorded as failed.

A *sample* is the unit a format lists: an image file, or an image a CSV names (so a CSV
row pointing at a missing file is a failed sample). A sample with any malformed
annotation (bad RLE, box outside the image...) fails whole: training on an image with
half its boxes would teach false negatives. ``found == ingested + failed`` always holds.

Reasons: the readers' codes (``truncated``, ``no_pixel_data``...) and, for annotations,
``missing_file`` (a CSV row names an image not on disk), ``no_annotation`` (an image the
CSV does not mention), ``shape_mismatch``, ``malformed_rle``, ``box_outside_image``,
``bad_csv_row`` and ``duplicate_image`` (a second file with an image id already seen).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from raysuite.data.readers import ReadError

ERROR_COLUMNS = ("sample_id", "file", "reason", "detail", "exception")

class LayoutError(ValueError):
    """ROOT is not the named layout, or a CSV lacks a required column (CLI exit 2)."""

    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class SampleError(ValueError):
    """A sample that fails ingest for a reason that is not a file read (bad annotation)."""

    def __init__(self, file: str | Path, reason: str, detail: str):
        self.file = str(file)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{file}: {detail}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.file, self.reason, self.detail))


@dataclass
class Ledger:
    """Collects manifest rows and error rows of one ingest."""

    root: Path | None = None  # error rows name files relative to it
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.rows) + len(self.errors)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def fail(self, sample_id: str, file: str | Path, reason: str, detail: str, exception: str = "") -> None:
        if self.root is not None and Path(file).is_absolute():
            with contextlib.suppress(ValueError):
                file = Path(file).relative_to(self.root).as_posix()
        self.errors.append(
            {"sample_id": str(sample_id), "file": str(file), "reason": reason, "detail": detail, "exception": exception}
        )

    def fail_from(self, sample_id: str, err: BaseException, file: str | Path = "") -> None:
        """Record ``err`` (a ReadError, SampleError or anything else) against ``sample_id``."""
        if isinstance(err, ReadError):
            self.fail(sample_id, err.path, err.code, err.reason, type(err).__name__)
        elif isinstance(err, SampleError):
            self.fail(sample_id, err.file, err.reason, err.detail, type(err).__name__)
        else:
            self.fail(sample_id, file, "unreadable", str(err).splitlines()[0][:300] if str(err) else "", type(err).__name__)

    def run(
        self,
        fn: Callable[[Any], dict[str, Any] | list[dict[str, Any]]],
        items: Sequence[tuple[str, Any]],
        workers: int = 1,
    ) -> None:
        """Apply ``fn`` to each ``(sample_id, item)``; a returned row (or rows) is ingested,
        an exception becomes an error row. ``workers > 1`` uses processes (``fn`` must be a
        module-level function). Order follows ``items``."""
        results = map_safe(fn, [it for _, it in items], workers)
        for (sample_id, item), (ok, value) in zip(items, results, strict=True):
            if ok:
                for row in value if isinstance(value, list) else [value]:
                    self.add(row)
            else:
                self.fail_from(sample_id, value, file=item if isinstance(item, str | Path) else "")

    def error_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.errors, columns=list(ERROR_COLUMNS))

    def counts(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "ingested": len(self.rows),
            "failed": len(self.errors),
            "failed_by_reason": dict(sorted(Counter(e["reason"] for e in self.errors).items())),
        }


def _call(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except Exception as err:  # recorded, never raised: the ingest goes on
        return False, err


def map_safe(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 1) -> list[tuple[bool, Any]]:
    """``[(True, fn(item)) or (False, exception)]`` in ``items`` order; ``workers > 1`` runs
    ``fn`` (a module-level function) in a process pool."""
    if workers > 1 and len(items) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
            return list(pool.map(_call, [fn] * len(items), items, chunksize=8))
    return [_call(fn, it) for it in items]


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def require_columns(frame: pd.DataFrame, required: Iterable[str], path: str | Path) -> None:
    """Refuse a CSV missing a required column, naming the file and the columns."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise LayoutError(path, f"missing required column(s) {missing}; found {list(frame.columns)}")


def read_csv(path: str | Path, required: Iterable[str] = (), **kwargs: Any) -> pd.DataFrame:
    """A dataset CSV with stripped column names (SIIM's header has leading spaces)."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(path, "required CSV not found")
    try:
        frame = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise LayoutError(path, f"cannot parse CSV ({err})") from None
    if kwargs.get("header", "infer") is not None:
        frame.columns = [str(c).strip() for c in frame.columns]
    require_columns(frame, required, path)
    return frame
