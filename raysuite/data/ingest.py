"""The ingest ledger: every sample a layout names is either ingested or recorded as failed.

A *sample* is the unit a format lists: an image file, or an image a CSV names (so a CSV
row pointing at a missing file is a failed sample). A sample with any malformed
annotation (bad RLE, box outside the image...) fails whole: training on an image with
half its boxes would teach false negatives. ``found == ingested + failed`` always holds.

Reasons: the readers' codes (``truncated``, ``no_pixel_data``, ``bad_header``,
``outside_root``...) and, for annotations, ``missing_file`` (a CSV row names an image not
on disk), ``no_annotation`` (an image the CSV does not mention), ``shape_mismatch``,
``malformed_rle``, ``box_outside_image``, ``bad_csv_row``, ``duplicate_image`` (a second
file with an image id already seen), ``bad_filename`` (a path that is not valid UTF-8) and
``unreadable`` (any other exception).

An error row holds the sample id, the file relative to the root, a reason, a fixed detail
written by raysuite and the exception's class: never an exception's message, which may
quote header values or absolute paths. Path components that look like a name or a date
(:func:`raysuite.data.phi.looks_identifying`) are shown as ``<redacted>``, and a path that
is not valid UTF-8 with replacement characters.
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

from raysuite.data import phi
from raysuite.data.progress import Progress
from raysuite.data.readers import ReadError
from raysuite.data.walk import BAD_FILENAME, is_utf8

ERROR_COLUMNS = ("sample_id", "file", "reason", "detail", "exception")
UNEXPECTED = "unexpected error; its message is not recorded (it may quote the file)"


def _utf8(text: str) -> str:
    """``text`` as valid UTF-8: undecodable bytes of a file name (kept by Python as
    surrogates) become replacement characters."""
    return text if is_utf8(text) else os.fsencode(text).decode("utf-8", "replace")


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
    progress: bool = False  # report decoding progress on stderr (raysuite.data.progress)
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.rows) + len(self.errors)

    def add(self, row: dict[str, Any]) -> None:
        """Ingest ``row``, or fail it ``bad_filename`` when its path is not valid UTF-8."""
        texts = (row.get(k) for k in ("sample_id", "path", "mask"))
        if all(is_utf8(t) for t in texts if isinstance(t, str)):
            self.rows.append(row)
        else:
            self.fail(str(row.get("sample_id", "")), str(row.get("path", "")), "bad_filename", BAD_FILENAME)

    def _shown(self, file: str | Path) -> str:
        """``file`` relative to the root (a file elsewhere by its name alone), valid UTF-8,
        with components that look like a name or a date redacted."""
        path = Path(file)
        if path.is_absolute():
            try:
                file = path.relative_to(self.root).as_posix() if self.root else path.name
            except ValueError:
                file = path.name
        return phi.redact(_utf8(str(file)), phi.looks_identifying)

    def fail(self, sample_id: str, file: str | Path, reason: str, detail: str, exception: str = "") -> None:
        self.errors.append(
            {
                "sample_id": phi.redact(_utf8(str(sample_id)), phi.looks_identifying),
                "file": self._shown(file),
                "reason": reason,
                "detail": _utf8(detail),
                "exception": exception,
            }
        )

    def fail_from(self, sample_id: str, err: BaseException, file: str | Path = "") -> None:
        """Record ``err`` against ``sample_id``: a ReadError or SampleError with its file,
        code and fixed detail; anything else as ``unreadable`` with ``file`` and only the
        exception's class."""
        if isinstance(err, ReadError):
            self.fail(sample_id, err.path, err.code, err.reason, type(err).__name__)
        elif isinstance(err, SampleError):
            self.fail(sample_id, err.file, err.reason, err.detail, type(err).__name__)
        else:
            self.fail(sample_id, file, "unreadable", UNEXPECTED, type(err).__name__)

    def run(
        self,
        fn: Callable[[Any], dict[str, Any] | list[dict[str, Any]]],
        items: Sequence[tuple[str, Any]],
        workers: int = 1,
    ) -> None:
        """Apply ``fn`` to each ``(sample_id, item)``; a returned row (or rows) is ingested,
        an exception becomes an error row. ``workers > 1`` uses processes (``fn`` must be a
        module-level function). Order follows ``items``."""
        results = map_safe(fn, [it for _, it in items], workers, self.progress)
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


def map_safe(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 1, progress: bool = False
) -> list[tuple[bool, Any]]:
    """``[(True, fn(item)) or (False, exception)]`` in ``items`` order; ``workers > 1`` runs
    ``fn`` (a module-level function) in a process pool; ``progress`` reports files done on
    stderr (:class:`~raysuite.data.progress.Progress`)."""
    meter = Progress(len(items)) if progress and items else None
    out: list[tuple[bool, Any]] = []
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(items) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=min(workers, len(items))))
            results = pool.map(_call, [fn] * len(items), items, chunksize=8)
        else:
            results = (_call(fn, it) for it in items)
        for result in results:
            out.append(result)
            if meter is not None:
                meter.update()
    if meter is not None:
        meter.close()
    return out


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
