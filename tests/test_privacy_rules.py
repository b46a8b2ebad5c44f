"""The salt rules, the path-component normaliser and identity checks, DICOM code
vocabularies, the ledger's error rows and the ingest progress lines."""

from __future__ import annotations

import io
import os

import pytest
from pydicom.dataset import Dataset

from raysuite.data import dicom_codes, phi, privacy
from raysuite.data.ingest import UNEXPECTED, Ledger
from raysuite.data.progress import Progress

# ------------------------------------------------------------------------------ salt


@pytest.fixture
def salt_file(monkeypatch, tmp_path):
    """The salt comes from a file under tmp_path (not yet there)."""
    monkeypatch.delenv("RAYSUITE_SALT", raising=False)
    monkeypatch.delenv("RAYSUITE_SALT_MUST_EXIST", raising=False)
    path = tmp_path / "cfg" / "salt"
    monkeypatch.setenv("RAYSUITE_SALT_FILE", str(path))
    return path


@pytest.mark.parametrize("content", [b"", b"0123456789abcde"], ids=["empty", "15 bytes"])
def test_an_empty_or_short_salt_file_is_refused_by_path(salt_file, content):
    salt_file.parent.mkdir()
    salt_file.write_bytes(content)
    with pytest.raises(privacy.SaltError, match=str(salt_file)) as err:
        privacy.salted_key("PID-1")
    assert isinstance(err.value, ValueError)
    if content:
        assert content.decode() not in str(err.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [("hex:", "empty"), ("hex:zz", "not hexadecimal"), ("hex:00ff", "shorter than 16"),
     ("", "empty"), ("tooshortsalt", "shorter than 16")],
)  # fmt: skip
def test_a_malformed_salt_variable_is_refused_without_its_value(monkeypatch, value, message):
    monkeypatch.setenv("RAYSUITE_SALT", value)
    with pytest.raises(privacy.SaltError, match=message) as err:
        privacy.check_salt()
    assert str(err.value).startswith("RAYSUITE_SALT:")
    if secret := value.removeprefix("hex:"):
        assert secret not in str(err.value)


def test_hex_salt_keys_like_its_bytes(monkeypatch, salt_file):
    salt = bytes(range(32))
    salt_file.parent.mkdir()
    salt_file.write_bytes(salt)
    from_file = privacy.salted_key("PID-7")
    monkeypatch.setenv("RAYSUITE_SALT", "hex:" + salt.hex())
    assert privacy.salted_key("PID-7") == from_file
    assert privacy.check_salt() == "the RAYSUITE_SALT environment variable"


def test_a_new_salt_file_is_private_whole_and_leaves_no_temporary_file(salt_file):
    key = privacy.salted_key("x")
    assert salt_file.stat().st_mode & 0o777 == 0o600 and len(salt_file.read_bytes()) == 32
    assert os.listdir(salt_file.parent) == ["salt"] and key == privacy.salted_key("x")
    assert privacy.check_salt() == f"the salt file {salt_file}"


def test_a_salt_file_written_meanwhile_by_another_process_is_the_one_kept(salt_file, monkeypatch):
    theirs = b"the other process's salt, first"
    real_link = os.link

    def racing_link(src, dst):  # the other process links its salt just before us
        salt_file.write_bytes(theirs)
        real_link(src, dst)

    monkeypatch.setattr(privacy.os, "link", racing_link)
    key = privacy.salted_key("PID-3")
    assert salt_file.read_bytes() == theirs and os.listdir(salt_file.parent) == ["salt"]
    monkeypatch.setenv("RAYSUITE_SALT", theirs.decode())
    assert privacy.salted_key("PID-3") == key


def test_a_worker_never_mints_its_own_salt(salt_file, monkeypatch):
    monkeypatch.setenv("RAYSUITE_SALT_MUST_EXIST", "1")
    with pytest.raises(privacy.SaltError, match="not found"):
        privacy.salted_key("PID-1")
    assert not salt_file.exists()


def test_worker_env_names_the_salt_file_never_the_salt(salt_file, monkeypatch):
    key = privacy.salted_key("PID-9")
    env = privacy.worker_env()
    assert env == {"RAYSUITE_SALT_FILE": str(salt_file), "RAYSUITE_SALT_MUST_EXIST": "1"}
    assert salt_file.read_bytes().hex() not in str(env)
    for name, value in env.items():  # a worker started with them keys alike
        monkeypatch.setenv(name, value)
    assert privacy.salted_key("PID-9") == key
    monkeypatch.setenv("RAYSUITE_SALT", "a-salt-of-twenty-bytes")
    assert privacy.worker_env() == {}


def test_a_relative_salt_file_is_sent_as_an_absolute_path(salt_file, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYSUITE_SALT_FILE", "rel-salt")
    assert privacy.worker_env()["RAYSUITE_SALT_FILE"] == str(tmp_path / "rel-salt")


# ------------------------------------------------------------------- path components


@pytest.mark.parametrize(
    "spelling",
    ["19700101", "1970-01-01", "01.01.1970", "1970_01_01", "1970.1.1", "1/1/1970", "01-Jan-1970",
     "1jan1970", "scan_1970-01-01_t1"],
)  # fmt: skip
def test_the_normaliser_reads_a_date_in_every_spelling(spelling):
    assert "19700101" in phi.normalise(spelling).dates


def test_the_normaliser_folds_case_accents_separators_and_camel_case():
    n = phi.normalise("Doe, Jane (1970-01-01)")
    assert n.text == "doejane19700101" and {"doe", "jane", "1970"} <= n.words
    assert phi.normalise("DOE^JANE").text == phi.normalise("doe_jane").text == "doejane"
    assert phi.normalise("JaneDoe").words == {"jane", "doe"}
    assert phi.normalise("Doe1970").words == {"doe", "1970"}
    assert phi.normalise("Müller").text == "muller"
    assert phi.normalise("01.13.1970").dates == {"19700113"}  # month first when day > 12
    assert phi.normalise("IM-0001").dates == set()


def _terms() -> phi.IdentityTerms:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JANE^Q", "MRN7654321", "19700101"
    ds.AccessionNumber, ds.InstitutionName = "ACC5550123", "Saint Elsewhere Hospital"
    ds.OtherPatientIDs = ["OLD-99887", "X1"]
    return phi.identity_terms(ds)


@pytest.mark.parametrize(
    "component",
    ["DOE^JANE", "Doe, Jane", "doe_jane", "JaneDoe", "Jane Doe (1970-01-01)", "DOE", "jane",
     "MRN7654321-series", "7654321", "doe1970", "01.01.1970", "19700101", "acc5550123",
     "SaintElsewhereHospital", "saint_elsewhere_hospital", "old-99887"],
)  # fmt: skip
def test_a_component_spelling_the_files_identity_is_caught(component):
    assert phi.names_identity(component, _terms())


@pytest.mark.parametrize(
    "component", ["sub-001", "Doesburg", "dicom", "MRN7654322", "1970", "IM-0001.dcm", "q", "x1"]
)
def test_a_component_not_spelling_it_is_kept(component):
    assert not phi.names_identity(component, _terms())


@pytest.mark.parametrize(
    ("component", "flagged"),
    [("DOE^JANE", True), ("Doe, Jane", True), ("Doe, Jane (1970-01-01)", True),
     ("01.01.1970", True), ("study_2019-03-04", True), ("1-Jan-1970", True),
     ("sub-001", False), ("IM-0001.dcm", False), ("1.2.826.0.1.3680043.2.7", False),
     ("1.2.826.0.1.3680043.2.7.dcm", False), ("1.3.6.1.4.1.2.1999.mhd", False),
     ("00000001_000.png", False),
     ("patient00001", False), ("19700101", False), ("t1.nii.gz", False), ("MRN7654321", False)],
)  # fmt: skip
def test_the_spelling_rules_alone(component, flagged):
    assert phi.looks_identifying(component) is flagged


def test_redact_replaces_whole_components():
    hidden = phi.looks_identifying
    assert phi.redact("DOE^JANE/study/IM-1.dcm", hidden) == "<redacted>/study/IM-1.dcm"
    assert phi.redact("MRN7654321/IM-1.dcm", hidden) == "MRN7654321/IM-1.dcm"
    assert phi.redact("MRN7654321/IM-1.dcm", hidden, patient_folder=True) == "<redacted>/IM-1.dcm"


# ----------------------------------------------------------------------- DICOM codes


def test_header_strings_are_kept_only_as_dicom_codes():
    assert dicom_codes.modality("CT") == "CT" and dicom_codes.modality(" MR ") == "MR"
    for value in ("DOE^JANE", "DOE JANE", "ct", "MRN7654321", None, 3):
        assert dicom_codes.modality(value) == ""
    assert dicom_codes.code_string("MONOCHROME1", dicom_codes.PHOTOMETRIC) == "MONOCHROME1"
    assert dicom_codes.code_string("JANE", dicom_codes.VIEW_POSITIONS) == ""
    assert dicom_codes.transfer_syntax_name("1.2.840.10008.1.2.1") == "Explicit VR Little Endian"
    assert dicom_codes.transfer_syntax_name("1.2.3.4") == "1.2.3.4"
    assert dicom_codes.transfer_syntax_name("DOE^JANE") == ""


# ---------------------------------------------------------------------------- ledger


def test_error_rows_keep_the_exception_class_never_its_message(tmp_path):
    ledger = Ledger(root=tmp_path)
    ledger.fail_from("s1", ValueError("could not convert string to float: 'MRN7654321'"), tmp_path / "a/x.dcm")
    ledger.fail("s2", "/elsewhere/DOE^JANE/x.dcm", "outside_root", "fixed")
    ledger.fail("s3", tmp_path / "Doe, Jane/x.dcm", "truncated", "fixed")
    ledger.fail("s4", os.fsdecode(b"p/\xff.png"), "bad_filename", "fixed")
    rows = ledger.error_frame().to_dict("records")
    assert rows[0] == {"sample_id": "s1", "file": "a/x.dcm", "reason": "unreadable", "detail": UNEXPECTED, "exception": "ValueError"}
    assert rows[1]["file"] == "x.dcm"  # outside the root: its name alone
    assert rows[2]["file"] == "<redacted>/x.dcm" and rows[3]["file"] == "p/\ufffd.png"
    ledger.add({"sample_id": "s5", "path": os.fsdecode(b"p/\xfe.png")})
    assert not ledger.rows and ledger.errors[-1]["reason"] == "bad_filename"
    assert ledger.counts()["found"] == 5


# -------------------------------------------------------------------------- progress


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_without_a_terminal_logs_every_tenth():
    stream, clock = io.StringIO(), _Clock()
    meter = Progress(40, stream=stream, clock=clock)
    for _ in range(40):
        clock.t += 0.5
        meter.update()
    meter.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[0] == "ingest: 4/40 files (10 %), 2.0 files/s, 0:18 left"
    assert lines[-1] == "ingest: 40/40 files (100 %), 2.0 files/s, 0:00 left"


def test_progress_on_a_terminal_draws_a_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    meter = Progress(3, stream=stream)
    for _ in range(3):
        meter.update()
    meter.close()
    assert "3/3" in stream.getvalue() and "ingest" in stream.getvalue()
