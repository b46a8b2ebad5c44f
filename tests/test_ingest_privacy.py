"""A corrupted collection through the real command line: every bad file becomes an error row
with its reason, the counts add up, and no identity (names, MRN, birth date in any spelling,
accession number, institution) reaches anything ingest writes or prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest

from raysuite.data import manifest
from raysuite.data.datasets import errors_path
from raysuite.data.formats import folder
from raysuite.data.synth.chestxray14 import synth as synth_chestxray14
from raysuite.data.synth.dicom_writer import Identity, write_dicom
from raysuite.data.synth.flare22 import synth as synth_flare22
from raysuite.data.synth.folder import synth as synth_folder
from raysuite.data.synth.luna16 import synth as synth_luna16
from raysuite.data.synth.vindr_cxr import synth as synth_vindr_cxr

RAYSUITE = Path(sys.executable).with_name("raysuite")
PATIENT = Identity(
    patient_id="MRN7654321",
    patient_name="DOE^JANE",
    birth_date="19700101",
    accession="ACC5550123",
    institution="Saint Elsewhere Hospital",
    referring="HOUSE^GREGORY",
)
SECRETS = (
    "doe", "jane", "mrn7654321", "7654321", "19700101", "1970-01-01", "01.01.1970",
    "1970_01_01", "01/01/1970", "acc5550123", "elsewhere", "gregory",
)  # fmt: skip
PIXELS = (np.arange(64).reshape(8, 8) * 50).astype(np.uint16)


def _dicom(path: Path, **overrides: object) -> Path:
    """A small valid DICOM carrying PATIENT; ``overrides`` set elements as LO text (a
    value of the wrong kind, as a broken export writes it)."""
    write_dicom(path, PIXELS, PATIENT, modality="MR", spacing=(0.5, 0.5))
    if overrides:
        ds = pydicom.dcmread(path)
        for keyword, value in overrides.items():
            tag = pydicom.datadict.tag_for_keyword(keyword)
            del ds[tag]
            ds.add_new(tag, "LO", value)
        ds.save_as(path)
    return path


def _truncated(path: Path, keep: int) -> Path:
    _dicom(path)
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAYSUITE_SALT": os.environ["RAYSUITE_SALT"]}
    return subprocess.run([str(RAYSUITE), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A folder collection with one file per bad case; returns (root, outside, expected
    reason per ROOT-relative path, paths that must be ingested)."""
    base = tmp_path_factory.mktemp("collection")
    root, outside = base / "root", base / "outside"
    synth_folder(root, cases=2, seed=0, size=16, slices=4)  # sub-001 NIfTI, sub-002 4 DICOMs
    outside.mkdir()
    _dicom(outside / "elsewhere.dcm")
    (outside / "series").mkdir()
    _dicom(outside / "series" / "IM-0001.dcm")
    (outside / "x.raw").write_bytes(np.zeros(2 * 3 * 4, "<i2").tobytes())
    nifti = root / "sub-001/anat/t1.nii.gz"
    expected: dict[str, str] = {}

    def bad(rel: str, reason: str) -> Path:
        expected[rel] = reason
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        return root / rel

    # unreadable DICOMs in patient-named folders, cut before the patient elements: "^" is
    # refused by the spelling rules alone, the MRN folder is hidden in the error row
    _truncated(bad("DOE^JANE/IM-0001.dcm", "path_names_patient"), 300)
    _truncated(bad("MRN7654321/scan.dcm", "no_pixel_data"), 300)
    # a cut in the pixel data: the identity is readable, so the path is refused unread
    _truncated(bad("Jane Doe/IM-0001.dcm", "path_names_patient"), -50)
    # folders spelling the identity: "Last, First (date)", a surname alone, dates, an MRN
    _dicom(bad("Doe, Jane (1970-01-01)/IM-0001.dcm", "path_names_patient"))
    shutil.copy(nifti, bad("Doe, Jane (1970-01-01)/t1.nii.gz", "path_names_patient"))
    _dicom(bad("DOE/study/IM-0001.dcm", "path_names_patient"))
    _dicom(bad("sub-003/01.01.1970/IM-0001.dcm", "path_names_patient"))
    _dicom(bad("sub-003/19700101/IM-0001.dcm", "path_names_patient"))
    _dicom(bad("sub-003/7654321-series/IM-0001.dcm", "path_names_patient"))
    # identity in fields that are not identity fields
    _dicom(bad("sub-004/spacing.dcm", "bad_header"), PixelSpacing="MRN7654321\\1")
    _dicom(root / "sub-004/modality.dcm", Modality="DOE^JANE")
    # links: out of the root (file, folder), inside (fine), and a second path to a file
    bad("sub-005/link_out.dcm", "outside_root").symlink_to(outside / "elsewhere.dcm")
    bad("sub-006", "outside_root").symlink_to(outside / "series", target_is_directory=True)
    (root / ".store").mkdir()
    shutil.copy(nifti, root / ".store/t1.nii.gz")
    (root / "sub-007").mkdir()
    (root / "sub-007/t1.nii.gz").symlink_to(Path("../.store/t1.nii.gz"))
    (root / ".archive/sub-008").mkdir(parents=True)
    shutil.copy(nifti, root / ".archive/sub-008/t1.nii.gz")
    (root / "sub-008").symlink_to(Path(".archive/sub-008"), target_is_directory=True)
    os.link(nifti, bad("sub-009/copy.nii.gz", "duplicate_image"))
    bad("sub-010/again.nii.gz", "duplicate_image").symlink_to(Path("../sub-001/anat/t1.nii.gz"))
    # a MetaImage whose data file lies outside the root
    mhd = bad("sub-011/ct/scan.mhd", "outside_root")
    mhd.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\n"
        "ElementDataFile = ../../../outside/x.raw\n"
    )
    # a file name that is not UTF-8
    (root / "sub-012").mkdir()
    raw_name = os.path.join(os.fsencode(root / "sub-012"), b"scan-\xff\xfe.nii.gz")
    shutil.copy(nifti, os.fsdecode(raw_name))
    expected[os.fsdecode(b"sub-012/scan-\xff\xfe.nii.gz")] = "bad_filename"
    ingested = {
        "sub-001/anat/t1.nii.gz", "sub-004/modality.dcm", "sub-007/t1.nii.gz", "sub-008/t1.nii.gz",
        *(f"sub-002/dicom/IM-{k:04d}.dcm" for k in range(1, 5)),
    }  # fmt: skip
    return root, outside, expected, ingested


@pytest.fixture(scope="module")
def ingested(collection, tmp_path_factory):
    root, *_ = collection
    out = tmp_path_factory.mktemp("out") / "m.parquet"
    result = _run("data", "ingest", "folder", str(root), str(out), "--workers", "2")
    return out, result


def _written_text(out: Path) -> str:
    """Everything ingest wrote, as text: both tables in full and the parquet metadata."""
    text = ""
    for path in (out, errors_path(out)):
        if path.exists():
            text += pq.read_table(path).to_pandas().astype(str).to_csv()
            text += str(pq.read_schema(path).metadata)
    return text


def test_every_bad_file_is_an_error_row_and_the_counts_add_up(collection, ingested):
    root, _, expected, good = collection
    out, result = ingested
    assert result.returncode == 0, result.stderr
    found, n_in, n_failed = (int(result.stdout.split(word)[1].split()[0]) for word in ("found", "ingested", "failed"))
    errors = pd.read_parquet(errors_path(out))
    df, _ = manifest.read(out)
    assert found == n_in + n_failed == len(df) + len(errors)
    assert set(df.path) == good and n_failed == len(expected)
    by_id = dict(zip(errors.sample_id, errors.reason, strict=True))
    assert by_id == {folder.sample_id(rel): reason for rel, reason in expected.items()}
    assert (errors.detail.str.len() > 0).all() and not errors.file.str.startswith("/").any()
    assert df.set_index("path").loc["sub-004/modality.dcm", "modality"] == ""  # not a DICOM code
    assert "\ufffd" in errors.set_index("reason").file["bad_filename"]  # replacement characters


def test_no_identity_reaches_any_output(collection, ingested):
    _, outside, _, _ = collection
    out, result = ingested
    text = (_written_text(out) + result.stdout + result.stderr).lower()
    for secret in SECRETS:
        assert secret not in text, secret
    assert str(outside).lower() not in text  # nor where the links lead
    assert "ingest:" in result.stderr and "100 %" in result.stderr  # progress, naming no file


def test_unchecked_and_refused_paths_hide_the_patient_folder(ingested):
    out, _ = ingested
    errors = pd.read_parquet(errors_path(out)).set_index("sample_id")
    assert errors.loc[folder.sample_id("MRN7654321/scan.dcm"), "file"] == "<redacted>/scan.dcm"
    assert errors.loc[folder.sample_id("DOE^JANE/IM-0001.dcm"), "file"] == "<redacted>/IM-0001.dcm"
    refused = errors.loc[folder.sample_id("sub-003/01.01.1970/IM-0001.dcm"), "file"]
    assert refused == "sub-003/<redacted>/IM-0001.dcm"
    assert errors.loc[folder.sample_id("sub-004/spacing.dcm"), "exception"] == "ReadError"


def test_an_ingest_where_every_sample_fails_exits_2_after_writing_errors(tmp_path):
    root, out = tmp_path / "root", tmp_path / "m.parquet"
    _truncated(root / "MRN7654321" / "scan.dcm", 300)
    result = _run("data", "ingest", "folder", str(root), str(out), "--workers", "1")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "all 1 samples failed; most common reason no_pixel_data" in line
    assert errors_path(out).exists() and not out.exists()
    assert "7654321" not in (result.stderr + _written_text(out)).lower()


def test_name_matched_formats_fail_duplicates_instead_of_dropping_them(tmp_path):
    """VinDr (X.dcm beside X.dicom), ChestX-ray14 (one name in two image folders), FLARE22
    and LUNA16 (one case or series in two folders) match images by name."""
    roots = {name: tmp_path / name for name in ("vindr", "cx", "flare", "luna")}
    synth_vindr_cxr(roots["vindr"], cases=4, seed=0, size=(64, 80))
    twin = sorted((roots["vindr"] / "train").glob("*.dicom"))[0]
    shutil.copy(twin, twin.with_suffix(".dcm"))
    synth_chestxray14(roots["cx"], cases=4, seed=0, size=64)
    copy = sorted(roots["cx"].glob("images*/**/*.png"))[0]
    (roots["cx"] / "images_999" / "images").mkdir(parents=True)
    shutil.copy(copy, roots["cx"] / "images_999" / "images" / copy.name)
    synth_flare22(roots["flare"], cases=2, seed=0, size=32, slices=8)
    case = sorted(roots["flare"].rglob("*_0000.nii.gz"))[0]
    (roots["flare"] / "extra").mkdir()
    shutil.copy(case, roots["flare"] / "extra" / case.name)
    synth_luna16(roots["luna"], cases=2, seed=0)
    scan = sorted(roots["luna"].glob("subset*/*.mhd"))[0]
    (roots["luna"] / "subset9").mkdir(exist_ok=True)
    for part in (scan, scan.with_suffix(".raw")):
        shutil.copy(part, roots["luna"] / "subset9" / part.name)
    for fmt, name in (("vindr_cxr", "vindr"), ("chestxray14", "cx"), ("flare22", "flare"), ("luna16", "luna")):
        out = tmp_path / f"{name}.parquet"
        result = _run("data", "ingest", fmt, str(roots[name]), str(out), "--workers", "1")
        assert result.returncode == 0, result.stderr
        errors = pd.read_parquet(errors_path(out))
        assert errors.reason.tolist() == ["duplicate_image"], (fmt, errors)
        found, n_in, n_failed = (int(result.stdout.split(w)[1].split()[0]) for w in ("found", "ingested", "failed"))
        assert found == n_in + n_failed and n_failed == 1
