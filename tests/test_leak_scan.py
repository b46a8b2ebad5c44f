"""``files_holding``, the privacy tests' scan of what a sweep left behind, finds each needle
wherever it lies: in text, inside binary bytes, spanning no line break or one."""

import os

from conftest import files_holding


def test_finds_each_needle_and_only_the_files_holding_one(tmp_path):
    text, binary, clean, multi = (tmp_path / n for n in ("a.log", "b.pt", "c.db", "d.bin"))
    text.write_text("INFO runtime env ok\nworker for DOE^JANE started\n")
    binary.write_bytes(os.urandom(4096) + b"\x00ACC000123\x00" + os.urandom(4096))
    clean.write_bytes(b"DOE^JAN ACC00012 " * 100)  # near misses only
    salt = b"\x8f\n\x00raw salt"
    multi.write_bytes(b"x" * 10 + salt + b"y")
    found = files_holding({b"DOE^JANE", b"ACC000123", salt}, [text, binary, clean, multi])
    assert found == {text: b"DOE^JANE", binary: b"ACC000123", multi: salt}
    assert files_holding({b"NOBODY^HERE"}, [text, binary, clean, multi]) == {}
