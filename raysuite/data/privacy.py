"""Patient identity stays out of everything raysuite writes.

Patients are keyed by a salted SHA-256 of the dataset's own patient identifier. The salt
comes from ``RAYSUITE_SALT`` (a string), else from the file named by ``RAYSUITE_SALT_FILE``,
else from ``~/.config/raysuite/salt`` (32 random bytes created on first use, mode 0600).
Keep the salt outside the repository and the same across the machines that ingest one
dataset: the same patient then gets the same key, and nobody holding a manifest can
recover identifiers by hashing candidate IDs. A sweep hands the driver's salt to every Ray
node through the job's runtime environment (:func:`salt_env`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
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


def _salt() -> bytes:
    if value := os.environ.get("RAYSUITE_SALT"):
        return bytes.fromhex(value[4:]) if value.startswith("hex:") else value.encode()
    return _salt_file(os.environ.get("RAYSUITE_SALT_FILE") or str(Path.home() / ".config" / "raysuite" / "salt"))


@functools.cache
def _salt_file(name: str) -> bytes:
    """The salt file's bytes (read once per process: ingest keys every sample with it)."""
    path = Path(name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def salt_env() -> dict[str, str]:
    """``{"RAYSUITE_SALT": ...}`` carrying this machine's salt, for the Ray runtime env: every
    node of a cluster then keys patients alike, so an ingest on any node gives the same
    manifest (and the same patient-level split)."""
    return {"RAYSUITE_SALT": "hex:" + _salt().hex()}


def salted_key(value: str, kind: str = "p") -> str:
    """``<kind>_<16 hex>``: a salted SHA-256 of ``value`` (a patient ID, a study UID...)."""
    digest = hashlib.sha256(_salt() + b"\0" + kind.encode() + b"\0" + value.strip().encode()).hexdigest()
    return f"{kind}_{digest[:16]}"


def identifying_values(ds: object) -> list[str]:
    """The non-empty identifying strings a pydicom dataset carries (to scrub messages)."""
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
                out.extend(part for part in text.replace("^", " ").split() if len(part) >= 3)
    return out


def scrub(text: str, secrets_: Iterable[str]) -> str:
    """``text`` with every identifying value replaced by ``<redacted>``."""
    for value in sorted(set(secrets_), key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    return text
