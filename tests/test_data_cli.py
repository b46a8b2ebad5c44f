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
