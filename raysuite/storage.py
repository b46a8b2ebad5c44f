"""The sweep's storage: a local path, a shared filesystem or any URI pyarrow understands
(``s3://bucket/prefix``, ``gs://...``). Everything a sweep needs later lives under it:
checkpoints, the stage cache, Tune's state, the sweep's own state and the report's files.

S3-compatible endpoints (MinIO, Ceph, a local test server) are configured the way pyarrow
reads them: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) in the environment of every
node, or ``?endpoint_override=host:port&scheme=http`` on the URI. Credentials come from the
usual AWS chain (instance role, ``~/.aws``, ``AWS_ACCESS_KEY_ID``), never through Ray's
runtime environment, which Ray logs on every node.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow.fs as pafs

TMP_SUFFIX = ".tmp"  # ``<name>.<uuid>.tmp``: a write_atomic under way

def root_of(given: str | None) -> str:
    """A sweep's storage: ``given`` (the spec's ``storage``, ``--storage``), else
    ``$RAYSUITE_STORAGE``, else ``./ray_results``; a local path made absolute, a URI as is."""
    root = given or os.environ.get("RAYSUITE_STORAGE") or "ray_results"
    return root if "://" in root else str(Path(root).expanduser().resolve())


def uri_of(path: str) -> str:
    """``path`` as a URI pyarrow opens: a local path becomes absolute ``file://``."""
    return path if "://" in path else f"file://{Path(path).expanduser().resolve()}"


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> Path | None:
    """``path`` as a local folder, or None when it is in an object store."""
    if not is_local(path):
        return None
    return Path(path.removeprefix("file://")).expanduser().resolve()


def join(base: str, *parts: str) -> str:
    """``base/part/...``, keeping a URI's query (``?endpoint_override=...``) at the end."""
    path, sep, query = base.partition("?") if "://" in base else (base, "", "")
    return "/".join([path.rstrip("/"), *parts]) + sep + query


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``path`` and the path inside it."""
    return pafs.FileSystem.from_uri(uri_of(path))


def full_uri(storage: str, inner: str) -> str:
    """The URI of ``inner``, a path inside ``storage``'s filesystem as Ray and pyarrow hand it
    back (an S3 checkpoint's ``path`` is ``bucket/key``, without its scheme)."""
    if "://" in inner or is_local(storage):
        return inner
    scheme, _, rest = storage.partition("://")
    query = rest.partition("?")[2]
    return f"{scheme}://{inner}" + (f"?{query}" if query else "")


def read_bytes(path: str) -> bytes | None:
    """The object or file at ``path``; None when there is none."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(inner) as f:
        return f.read()


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` so a reader sees the old content (or none) or the new, never a part.
    Local and shared filesystems: a temporary file in the same folder, flushed to disk, then
    renamed over the final name (removed if anything fails). Object stores: one PUT of the
    whole object. (pyarrow's S3 stream otherwise uploads even eight bytes as a three-request
    multipart upload; with ``allow_delayed_open`` it sends a small object as one PutObject.)"""
    fs, inner = pafs.FileSystem.from_uri(_put_once(uri_of(path)))
    parent = inner.rpartition("/")[0]
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(parent or ".", exist_ok=True)
        tmp = f"{inner}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, inner)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def is_partial(name: str) -> bool:
    """Whether a file name is a :func:`write_atomic` write under way (or left by a crash)."""
    return name.endswith(TMP_SUFFIX)


def _put_once(uri: str) -> str:
    """``uri`` with, for S3, ``allow_delayed_open=true`` (see :func:`write_atomic`)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        return uri
    query = dict(parse_qsl(parts.query))
    query.setdefault("allow_delayed_open", "true")
    return urlunsplit(parts._replace(query=urlencode(query)))


def upload_dir(local: Path, path: str) -> None:
    """Copy every file under ``local`` to ``path`` (a folder in the storage)."""
    fs, inner = filesystem(path)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(str(local), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
