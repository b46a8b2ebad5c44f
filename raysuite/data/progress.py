"""Ingest progress on stderr: files done of total, rate and time left.

On a terminal a tqdm bar; otherwise (a log file, a Ray worker, CI) one plain line each
time another 10 % of the files is done, the last at 100 %. Neither names a file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts files done of ``total``; :meth:`update` after each, :meth:`close` at the end.
    Writes to ``stream`` (default stderr); ``clock`` (seconds) is injectable for tests."""

    def __init__(
        self,
        total: int,
        label: str = "ingest",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream if stream is not None else sys.stderr
        self._now = clock
        self._start = self._now()
        self._next = 1  # the next tenth to report
        is_tty = getattr(self.stream, "isatty", lambda: False)()
        self._bar = (
            tqdm(total=total, desc=label, unit="file", file=self.stream, leave=True)
            if is_tty and total > 0
            else None
        )

    def line(self) -> str:
        """``ingest: 40/400 files (10 %), 12.3 files/s, 0:29 left``."""
        elapsed = max(self._now() - self._start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        percent = 100 * self.done // max(self.total, 1)
        return (
            f"{self.label}: {self.done}/{self.total} files ({percent} %), "
            f"{rate:.1f} files/s, {_duration(left)} left"
        )

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.total and self.done * 10 >= self._next * self.total:
            self._next = self.done * 10 // self.total + 1
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
