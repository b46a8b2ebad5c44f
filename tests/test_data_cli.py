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


@pytest.mark.parametrize(
    ("options", "key"),
    [(["--split", "a,b,c"], "--split"), (["--split", "0.5,0.5"], "--split"),
     (["--split", "0.5,0.5,0.5"], "--split"), (["--split", "-0.2,0.6,0.6"], "--split"),
     (["--folds", "1"], "--folds")],
)  # fmt: skip
def test_a_bad_split_exits_2_naming_the_option_before_any_file_is_read(options, key, tmp_path, capsys, monkeypatch):
    from raysuite.data import datasets

    def no_ingest(name):
        raise AssertionError("the split must be checked before the ingest starts")

    monkeypatch.setattr(datasets.formats, "get", no_ingest)
    out = tmp_path / "m.parquet"
    assert main(["data", "ingest", "folder", str(tmp_path), str(out), *options]) == 2
    assert key in capsys.readouterr().err and not errors_path(out).exists()


@pytest.mark.parametrize("cases", ["-3", "0"])
def test_synth_refuses_a_non_positive_case_count(cases, tmp_path, capsys):
    assert main(["data", "synth", "mura", str(tmp_path / "d"), "--cases", cases]) == 2
    assert "--cases" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_a_malformed_salt_exits_2_before_reading_and_names_its_source(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAYSUITE_SALT", "hex:zz")
    root, out = tmp_path / "data", tmp_path / "m.parquet"
    assert main(["data", "synth", "mura", str(root), "--cases", "2"]) == 0
    assert main(["data", "ingest", "mura", str(root), str(out)]) == 2
    err = capsys.readouterr().err
    assert "RAYSUITE_SALT" in err and "zz" not in err and not errors_path(out).exists()


def test_data_errors_prints_the_error_table_as_csv(tmp_path, capsys):
    import pandas as pd

    root, out = tmp_path / "data", tmp_path / "m.parquet"
    assert main(["data", "synth", "mura", str(root), "--cases", "2"]) == 0
    next(root.rglob("*.png")).write_bytes(b"broken")
    assert main(["data", "ingest", "mura", str(root), str(out), "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["data", "errors", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "sample_id,file,reason,detail,exception"
    expected = pd.read_parquet(errors_path(out))
    assert len(expected) == 1 and printed == expected.to_csv(index=False)
    assert main(["data", "errors", str(tmp_path / "none.parquet")]) == 2
    assert "none.errors.parquet" in capsys.readouterr().err


def test_the_default_manifest_follows_the_split_and_format(tmp_path):
    from raysuite.data.datasets import default_manifest_path

    base = {"format": "mura", "root": str(tmp_path), "cache_dir": str(tmp_path / "cache")}
    paths = {
        default_manifest_path(base),
        default_manifest_path({**base, "split": {"ratios": [0.6, 0.2, 0.2]}}),
        default_manifest_path({**base, "split": {"seed": 1}}),
        default_manifest_path({**base, "split": {"folds": 5}}),
        default_manifest_path({**base, "format": "chestxray14"}),
        default_manifest_path({**base, "root": str(tmp_path / "other")}),
    }
    assert len(paths) == 6
    same = {"split": {"ratios": (0.7, 0.1, 0.2), "seed": 0, "folds": None}}
    assert default_manifest_path({**base, **same}) == default_manifest_path(base)
    assert default_manifest_path(base).parent == tmp_path / "cache" / "manifests"
