"""Listing a dataset root without leaving it.

:func:`walk` finds the sample files under a root and, as failures with a reason, the
entries that must not be read or counted twice:

- ``outside_root``: a symbolic link (to a file or a folder) that resolves outside the
  root; it is never opened. A link that stays inside is followed like any file or folder.
- ``duplicate_image``: a second path to a file already found (a symbolic or hard link,
  or a linked folder that leads back into the tree); the path without links wins.
- ``missing_file``: a symbolic link to nothing.
- ``bad_filename``: a path that is not valid UTF-8 (a manifest cannot store it).
- ``unreadable``: a folder that cannot be listed.

Hidden entries (``.name``) and the names ``skip`` refuses are neither read nor counted.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raysuite.data.readers import is_inside

BAD_FILENAME = "the path is not valid UTF-8 (shown with replacement characters); rename it"


@dataclass(frozen=True)
class Entry:
    """A sample file (``problem`` empty, ``kind`` its kind) or a failure (``problem`` the
    reason, ``detail`` a fixed sentence, ``kind`` None when the entry was not read, and
    ``folder`` true for a folder); ``rel`` is "/"-separated, relative to the root."""

    rel: str
    kind: str | None = None
    problem: str = ""
    detail: str = ""
    folder: bool = False


def is_utf8(name: str) -> bool:
    """Whether a file name (as Python decodes it, undecodable bytes kept as surrogates) is
    valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def walk(
    root: Path, kind: Callable[[Path], str | None], skip: Callable[[str], bool]
) -> list[Entry]:
    """Every sample under ``root`` (``kind(path)`` not None; it may read the file, and is
    only called on files inside the root) and every failure, sorted by ``rel``. Symbolic
    links are judged by their names alone until they are known to stay inside."""
    root = Path(root)
    found: list[tuple[bool, str, tuple[int, int], str]] = []  # (linked, rel, inode, kind)
    out: list[Entry] = []
    visited: set[str] = set()
    queue: list[tuple[bool, str]] = [(False, "")]  # (reached through a link, folder rel)
    while queue:
        linked, folder = heapq.heappop(queue)  # every folder without a link first
        real = os.path.realpath(root / folder)
        if real in visited:
            out.append(Entry(folder, None, "duplicate_image", "a linked folder already read", True))
            continue
        visited.add(real)
        try:
            with os.scandir(root / folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            out.append(Entry(folder, None, "unreadable", "the folder cannot be listed", True))
            continue
        for entry in entries:
            if entry.name.startswith(".") or skip(entry.name):
                continue
            rel = f"{folder}/{entry.name}" if folder else entry.name
            is_link = entry.is_symlink()
            if is_link and not is_inside(root, root / rel):
                detail = "a symbolic link leading outside the root; not read"
                out.append(Entry(rel, None, "outside_root", detail, entry.is_dir()))
            elif entry.is_dir():
                heapq.heappush(queue, (linked or is_link, rel))
            elif is_link and not entry.is_file():
                out.append(Entry(rel, None, "missing_file", "a symbolic link to nothing"))
            elif entry.is_file() and (sample := kind(root / rel)) is not None:
                stat = entry.stat()
                found.append((linked or is_link, rel, (stat.st_dev, stat.st_ino), sample))
    seen: set[tuple[int, int]] = set()
    for _, rel, inode, sample in sorted(found):  # paths without links win
        if inode in seen:
            out.append(Entry(rel, sample, "duplicate_image", "a second path to a file already found"))
        elif not is_utf8(rel):
            out.append(Entry(rel, sample, "bad_filename", BAD_FILENAME))
        else:
            seen.add(inode)
            out.append(Entry(rel, sample))
    return sorted(out, key=lambda e: e.rel)
