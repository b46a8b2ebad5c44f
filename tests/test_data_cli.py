"""`raysuite data synth FORMAT d && raysuite data ingest FORMAT d m.parquet` for every format."""

import re

import pytest

from raysuite.cli import main
from raysuite.data import manifest, privacy
from raysuite.data.datasets import errors_path
from raysuite.data.formats import NAMES


def _identities(root):
    """Every identifying value the synthetic DICOMs under ``root`` carry."""
    import pydicom

    values = set()
    for path in list(root.rglob("*.dcm")) + list(root.rglob("*.dicom")):
        values.update(privacy.identifying_values(pydicom.dcmread(path, stop_before_pixels=True)))
    return values


@pytest.mark.parametrize("fmt", NAMES)
def test_synth_then_ingest_exits_0_and_counts_add_up(fmt, tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "m.parquet"
    assert main(["data", "synth", fmt, str(root), "--cases", "3", "--seed", "1"]) == 0
    assert main(["data", "ingest", fmt, str(root), str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr()
    found, ingested, failed = map(int, re.search(r"found (\d+)  ingested (\d+)  failed (\d+)", printed.out).groups())
    assert found == ingested + failed and ingested > 0 and failed == 0
    df, meta = manifest.read(out)
    assert len(df) == ingested and meta["format"] == fmt
    assert df.groupby("patient_key").split.nunique().max() == 1
    secrets = _identities(root)
    if fmt in ("vindr_cxr", "siim_acr"):
        assert secrets, "synthetic DICOMs should carry a made-up identity"
    import pandas as pd

    decoded = df.to_csv() + pd.read_parquet(errors_path(out)).to_csv() + str(meta) + printed.out + printed.err
    written = out.read_bytes() + errors_path(out).read_bytes()  # compressed pages, but literals survive
    for value in secrets:
        assert value not in decoded and value.encode() not in written, value


def test_prepare_synthesises_once_then_reads_the_manifest(tmp_path):
    from raysuite.data.datasets import manifest_path, prepare

    data = {"format": "mura", "root": str(tmp_path / "mura"), "cache_dir": str(tmp_path / "cache"), "synthetic_cases": 3}
    with pytest.raises(FileNotFoundError, match="synthetic_if_missing"):
        prepare(data, lambda root: True, default_cases=3)
    data["synthetic_if_missing"] = True
    prepare(data, lambda root: False, default_cases=3)
    manifest_file = manifest_path(data)
    assert (tmp_path / "mura" / ".raysuite-complete").exists() and manifest_file.exists()
    stamp = manifest_file.stat().st_mtime_ns
    prepare(data, lambda root: False, default_cases=3)  # already there: neither rewritten
    assert manifest_file.stat().st_mtime_ns == stamp
    df, meta = manifest.read(manifest_file)
    assert meta["format"] == "mura" and len(df) > 0
