"""Patient identity stays out of everything raysuite writes.

Patients are keyed by a salted SHA-256 of the dataset's own patient identifier. The salt
comes from ``RAYSUITE_SALT`` (a string, or ``hex:`` and hexadecimal bytes), else from the
file named by ``RAYSUITE_SALT_FILE``, else from ``~/.config/raysuite/salt`` (32 random bytes
created on first use, mode 0600, written to a temporary file and linked into place so two
processes racing keep one salt). A salt shorter than 16 bytes, empty or malformed is a
:class:`SaltError` naming where it came from, never its value.

Keep the salt outside the repository and the same across the machines that ingest one
dataset: the same patient then gets the same key, and nobody holding a manifest can
recover identifiers by hashing candidate IDs. The salt itself never travels: a sweep tells
its Ray workers where the salt file is (:func:`worker_env`, paths are not secrets) and that
it must exist (``RAYSUITE_SALT_MUST_EXIST=1``: a worker never mints a salt of its own); a
salt given in ``RAYSUITE_SALT`` must be set on every node by whoever starts it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

# DICOM attributes (keywords) that identify a patient or where they were seen. They are
# read only to build keys and never copied into meta, manifests, errors, logs or MLflow.
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
)


MIN_SALT_BYTES = 16


class SaltError(ValueError):
    """The salt is missing, empty, too short or malformed (the message names its source)."""


def _salt_path() -> Path | None:
    """The salt file in use, or None when the salt comes from ``RAYSUITE_SALT``."""
    if "RAYSUITE_SALT" in os.environ:
        return None
    name = os.environ.get("RAYSUITE_SALT_FILE") or Path.home() / ".config" / "raysuite" / "salt"
    return Path(name).expanduser().absolute()


def _salt() -> bytes:
    path = _salt_path()
    if path is None:
        return _salt_value(os.environ["RAYSUITE_SALT"])
    return _salt_file(str(path), os.environ.get("RAYSUITE_SALT_MUST_EXIST") == "1")


def _salt_value(value: str) -> bytes:
    if value.startswith("hex:"):
        try:
            salt = bytes.fromhex(value[4:])
        except ValueError:
            raise SaltError("RAYSUITE_SALT: not hexadecimal after 'hex:'") from None
    else:
        salt = value.encode("utf-8", "surrogateescape")
    return _checked(salt, "RAYSUITE_SALT")


def _checked(salt: bytes, source: str) -> bytes:
    if not salt:
        raise SaltError(f"{source}: the salt is empty")
    if len(salt) < MIN_SALT_BYTES:
        raise SaltError(f"{source}: the salt is shorter than {MIN_SALT_BYTES} bytes")
    return salt


@functools.cache
def _salt_file(name: str, must_exist: bool) -> bytes:
    """The salt file's bytes (read once per process: ingest keys every sample with it);
    created when missing unless ``must_exist``. A failure is not cached."""
    path = Path(name)
    if not path.exists():
        if must_exist:
            raise SaltError(
                f"{path}: salt file not found (RAYSUITE_SALT_MUST_EXIST=1: this process may not "
                "create one; copy the driver's salt file here)"
            )
        _create_salt_file(path)
    try:
        salt = path.read_bytes()
    except OSError as err:
        raise SaltError(f"{path}: cannot read the salt file ({type(err).__name__})") from None
    return _checked(salt, str(path))


def _create_salt_file(path: Path) -> None:
    """Write 32 random bytes to a private temporary file beside ``path`` and hard-link it
    to ``path``: the salt appears whole or not at all, and when another process linked its
    salt first, that one is kept."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp creates it with mode 0600
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def check_salt() -> str:
    """Validate the salt (creating the default file when allowed, as ingest would) and say
    where it comes from, without its value. Raises :class:`SaltError`."""
    _salt()
    path = _salt_path()
    return "the RAYSUITE_SALT environment variable" if path is None else f"the salt file {path}"


def worker_env() -> dict[str, str]:
    """Environment variables for Ray workers so they key patients with this process's salt:
    ``RAYSUITE_SALT_FILE`` (absolute path) and ``RAYSUITE_SALT_MUST_EXIST=1`` when the salt
    is a file, ``{}`` when it is ``RAYSUITE_SALT`` (its value is never sent). Validates the
    salt first (:class:`SaltError`)."""
    _salt()
    path = _salt_path()
    return {} if path is None else {"RAYSUITE_SALT_FILE": str(path), "RAYSUITE_SALT_MUST_EXIST": "1"}


def salted_key(value: str, kind: str = "p") -> str:
    """``<kind>_<16 hex>``: a salted SHA-256 of ``value`` (a patient ID, a study UID...)."""
    digest = hashlib.sha256(_salt() + b"\0" + kind.encode() + b"\0" + value.strip().encode()).hexdigest()
    return f"{kind}_{digest[:16]}"


def identifying_values(ds: object) -> list[str]:
    """The non-empty identifying strings a pydicom dataset carries, whole and split into
    name parts (what a leak check looks for in written files). A part that is a short number
    (fewer than 6 digits, e.g. the 110 of "Synthetic Hospital 110 Hanoi") is not a value on
    its own: it turns up by chance in any hex digest the outputs carry; the whole value it
    came from is still looked for."""
    out = []
    for keyword in IDENTIFYING_KEYWORDS:
        value = getattr(ds, keyword, None)
        if value is None:
            continue
        values: Iterable = value if isinstance(value, list | tuple) else [value]
        for v in values:
            text = str(v).strip()
            if len(text) >= 3:
                out.append(text)
                parts = text.replace("^", " ").split()
                out.extend(p for p in parts if len(p) >= 3 and not (p.isdigit() and len(p) < 6))
    return out
