"""Header strings that may be copied into a manifest, checked against their DICOM
vocabulary first.

A header field is free to hold anything (a PACS export once wrote ``DOE^JANE`` into
Modality), so a value is copied only when it has the shape of its value representation
and, where DICOM defines the terms, is one of them; anything else becomes ``""``.
"""

from __future__ import annotations

import re
from collections.abc import Collection

# PS3.3 C.7.3.1.1.1 Modality defined terms, current and retired
MODALITIES = frozenset((
    "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CD", "CF", "CFM", "CP", "CR", "CS", "CT",
    "CTPROTOCOL", "DD", "DF", "DG", "DM", "DMS", "DOC", "DS", "DX", "EC", "ECG", "EPS", "ES",
    "FA", "FID", "FS", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LP",
    "LS", "MA", "MG", "MR", "MS", "NM", "OAM", "OCT", "OP", "OPM", "OPR", "OPT", "OPTBSV",
    "OPTENF", "OPV", "OSS", "OT", "PLAN", "POS", "PR", "PT", "PX", "REG", "RESP", "RF", "RG",
    "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD", "RTRECORD", "RTSEGANN", "RTSTRUCT",
    "RWV", "SEG", "SM", "SMR", "SR", "SRF", "ST", "STAIN", "TEXTUREMAP", "TG", "US", "VA", "VF",
    "VL", "XA", "XAPS", "XC",
))  # fmt: skip
# PS3.3 C.7.6.3.1.2 Photometric Interpretation defined terms
PHOTOMETRIC = frozenset((
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
    "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB",
))  # fmt: skip
# PS3.3 C.8.11.5.1.1 View Position defined terms (DX)
VIEW_POSITIONS = frozenset(("AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO"))

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def code_string(value: object, vocabulary: Collection[str]) -> str:
    """``value`` (a CS element: upper-case A-Z, 0-9, space and ``_``, at most 16 characters)
    stripped when it is one of the defined terms ``vocabulary``, else ``""``."""
    text = str(value if value is not None else "").strip()
    return text if text in vocabulary else ""


def modality(value: object) -> str:
    """A DICOM Modality code (``CT``, ``MR``...), or ``""``."""
    return code_string(value, MODALITIES)


def transfer_syntax_name(value: object) -> str:
    """pydicom's name of a transfer syntax UID (the UID itself when pydicom does not know
    it), or ``""`` when ``value`` is not shaped like a UID (digits and dots, at most 64)."""
    from pydicom.uid import UID

    text = str(value if value is not None else "").strip()
    if len(text) > 64 or not _UID.fullmatch(text):
        return ""
    return UID(text).name
