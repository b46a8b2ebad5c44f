"""Patient identity in file paths: spotting it and redacting it.

A manifest stores each sample's path, and an error table the path of each file that
failed, so a folder named ``DOE^JANE`` or ``Doe, Jane (1970-01-01)`` would carry a name
into both. Two checks look at every path component:

- :func:`names_identity` compares it with the file's own identifying header values
  (:func:`identity_terms` of a DICOM): after :func:`normalise` (case, accents, separators
  and punctuation dropped, camelCase and letter/digit runs split, dates read in every
  common spelling) a component names the patient when it contains a whole value
  (``doejane``, ``janedoe``, ``mrn7654321``), holds a person-name part of three or more
  letters as a word of its own (``Doe``), or spells the birth date.
- :func:`looks_identifying` needs no header: the spelling rules a person's name or a date
  leaves in a folder name, ``^`` (the DICOM name delimiter), ``Last, First``, or a date
  written with separators (``1970-01-01``, ``01.01.1970``, ``1-Jan-1970``...).

:func:`redact` replaces the components either check flags with ``<redacted>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from raysuite.data.privacy import IDENTIFYING_KEYWORDS

REDACTED = "<redacted>"
PERSON_NAME_KEYWORDS = frozenset(
    k for k in IDENTIFYING_KEYWORDS if k.endswith(("Name", "Names")) and "Institution" not in k
)
DATE_KEYWORDS = frozenset({"PatientBirthDate"})

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_S = r"[-_./ ]"
_YMD = re.compile(rf"(?<!\d)(\d{{4}})(?:{_S}(\d{{1,2}}){_S}(\d{{1,2}})|(\d{{2}})(\d{{2}}))(?!\d)")
_DMY = re.compile(rf"(?<!\d)(?:(\d{{1,2}}){_S}(\d{{1,2}}){_S}|(\d{{2}})(\d{{2}}))(\d{{4}})(?!\d)")
_D_MON_Y = re.compile(rf"(?<![a-z\d])(\d{{1,2}}){_S}?({'|'.join(_MONTHS)})[a-z]*{_S}?(\d{{4}})(?!\d)")
_UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*)){3,}")  # >= 4 arcs, no leading zeros
_FILE_SUFFIX = re.compile(r"\.(dcm|dicom|mhd|z?raw|png|jpe?g|nii(\.gz)?)$", re.IGNORECASE)
_LAST_FIRST = re.compile(r"[^\W\d_]{2,}\s*,\s*[^\W\d_]{2,}")
_WORDS = re.compile(r"[^\W\d_]+|\d+")


class Normalised(NamedTuple):
    """A path component as the identity checks see it."""

    text: str  # lower-case letters and digits only, accents dropped
    words: frozenset[str]  # its runs of letters and of digits
    dates: frozenset[str]  # YYYYMMDD of every plausible date it spells


@dataclass(frozen=True)
class IdentityTerms:
    """The identifying values of one file, normalised for comparison with paths."""

    whole: frozenset[str] = field(default_factory=frozenset)  # >= 3 characters
    name_parts: frozenset[str] = field(default_factory=frozenset)  # >= 3 characters
    dates: frozenset[str] = field(default_factory=frozenset)  # YYYYMMDD

    def __bool__(self) -> bool:
        return bool(self.whole or self.name_parts or self.dates)


def _fold(text: str) -> str:
    """Accents dropped, camelCase split with a space, lower case."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _date(year: str, month: str, day: str) -> str | None:
    y, m, d = int(year), int(month), int(day)
    return f"{y:04d}{m:02d}{d:02d}" if 1800 <= y <= 2199 and 1 <= m <= 12 and 1 <= d <= 31 else None


def _dates(folded: str, separated_only: bool = False) -> set[str]:
    """YYYYMMDD readings of the dates in ``folded`` (lower case): year first, day or month
    first (both readings), or with a month name; ``separated_only`` skips 8-digit runs
    without separators (``19700101``), which numbered file names also make."""
    found: set[str | None] = set()
    for m in _YMD.finditer(folded):
        if m.group(2) or not separated_only:
            month, day = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
            found.add(_date(m.group(1), month, day))
    for m in _DMY.finditer(folded):
        if m.group(1) or not separated_only:
            a, b = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            found.update({_date(m.group(5), b, a), _date(m.group(5), a, b)})
    for m in _D_MON_Y.finditer(folded):
        found.add(_date(m.group(3), str(_MONTHS.index(m.group(2)) + 1), m.group(1)))
    return {d for d in found if d}


def normalise(component: str) -> Normalised:
    """``component`` folded for comparison: ``"Doe, Jane (01.01.1970)"`` gives text
    ``doejane01011970``, words ``{doe, jane, 01011970}`` and dates ``{19700101}``."""
    folded = _fold(component)
    words = frozenset(_WORDS.findall(folded))
    return Normalised(re.sub(r"[\W_]+", "", folded), words, frozenset(_dates(folded)))


def identity_terms(ds: Any) -> IdentityTerms:
    """The identifying values (:data:`~raysuite.data.privacy.IDENTIFYING_KEYWORDS`) of a
    pydicom dataset, normalised: whole values (person names also given name first and
    reversed; digit runs of five or more, an MRN without its prefix), person-name parts
    and the birth date."""
    whole: set[str] = set()
    parts: set[str] = set()
    dates: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            value = ds.get(keyword)
            many = isinstance(value, Sequence) and not isinstance(value, str | bytes)
            texts = [str(v).strip() for v in (value if many else [value]) if v is not None]
        except Exception:  # a value pydicom cannot decode names nothing we can compare
            continue
        for text in filter(None, texts):
            folded = _fold(text.replace("^", " "))
            words = _WORDS.findall(folded)
            whole.add("".join(words))
            whole.update(w for w in words if w.isdigit() and len(w) >= 5)
            if keyword in PERSON_NAME_KEYWORDS:
                parts.update(w for w in words if len(w) >= 3 and not w.isdigit())
                if len(words) > 1:
                    whole.update({"".join(words[1::-1] + words[2:]), "".join(reversed(words))})
            if keyword in DATE_KEYWORDS:
                dates.update(_dates(folded))
    return IdentityTerms(
        frozenset(w for w in whole if len(w) >= 3), frozenset(parts), frozenset(dates)
    )


def names_identity(component: str, terms: IdentityTerms) -> bool:
    """Whether ``component`` spells one of ``terms`` (see the module docstring)."""
    n = normalise(component)
    return (
        any(t in n.text for t in terms.whole)
        or bool(n.words & terms.name_parts)
        or bool(n.dates & terms.dates)
    )


def looks_identifying(component: str) -> bool:
    """The spelling rules alone: ``^``, ``Last, First`` or a date with separators (a UID
    such as ``1.2.840.10008.5.1.4`` or ``<UID>.mhd`` is not read as a date)."""
    if "^" in component or _LAST_FIRST.search(component):
        return True
    uid = _FILE_SUFFIX.sub("", component)
    return not _UID.fullmatch(uid) and bool(_dates(_fold(component), separated_only=True))


def redact(rel: str, hidden: Callable[[str], bool], patient_folder: bool = False) -> str:
    """``rel`` ("/"-separated) with each component ``hidden`` flags replaced by
    ``<redacted>``; ``patient_folder`` also replaces the first one (the patient folder of a
    file whose identity could not be read, or such a folder itself)."""
    out = [REDACTED if hidden(p) else p for p in rel.split("/")]
    if patient_folder:
        out[0] = REDACTED
    return "/".join(out)
