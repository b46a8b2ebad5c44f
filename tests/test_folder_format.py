"""Plain-folder format and slice reading: synth -> ingest, broken and stray files, privacy,
read_slice orientation per file kind, SliceReader's one-volume memo."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image

from raysuite.data import manifest, privacy, slices
from raysuite.data.datasets import errors_path, run_ingest
from raysuite.data.formats import folder
from raysuite.data.ingest import LayoutError
from raysuite.data.readers import ReadError
from raysuite.data.slices import SliceReader, read_slice
from raysuite.data.synth.dicom_writer import Identity, write_dicom
from raysuite.data.synth.folder import synth as synth_folder

SIZE, SLICES = 32, 8


def _ingest(root: Path, out: Path, workers: int = 2) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    counts = run_ingest("folder", root, out, workers=workers)
    df, _ = manifest.read(out)
    return counts, df.set_index("path", drop=False), pd.read_parquet(errors_path(out))


def _identities(root: Path) -> set[str]:
    values: set[str] = set()
    for path in root.rglob("*.dcm"):
        values.update(privacy.identifying_values(pydicom.dcmread(path, stop_before_pixels=True)))
    return values


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    written = synth_folder(root, cases=4, seed=0, size=SIZE, slices=SLICES)
    (root / ".raysuite-complete").write_text("synthetic\n")
    out = tmp_path_factory.mktemp("folder-manifest") / "m.parquet"
    return root, written, out, *_ingest(root, out)


def test_synth_then_ingest_counts_add_up_and_rows_describe_each_file(collection):
    root, written, _, counts, df, errors = collection
    assert written == {
        "patients": 4,
        "nifti_volumes": 2,
        "dicom_series": 2,
        "dicom_files": 2 * SLICES,
        "files": 2 + 2 * SLICES,
    }
    assert (
        counts["found"] == counts["ingested"] + counts["failed"] == written["files"]
        and counts["failed"] == 0
    )
    assert errors.empty and len(df) == written["files"]

    nifti = df[df.path.str.endswith(".nii.gz")]
    assert sorted(nifti.path) == ["sub-001/anat/t1.nii.gz", "sub-003/anat/t1.nii.gz"]
    assert (nifti.modality == "").all() and (nifti.depth == SLICES).all()
    assert (nifti.height == SIZE).all() and (nifti.width == SIZE).all()
    assert {tuple(np.round(s, 3)) for s in nifti.spacing} == {
        (240 / SIZE, 240 / SIZE, 150 / SLICES)
    }

    dicom = df[df.path.str.endswith(".dcm")]
    assert len(dicom) == 2 * SLICES and (dicom.modality == "MR").all()
    assert (dicom.depth == 1).all() and (dicom.height == SIZE).all() and (dicom.width == SIZE).all()
    extra = dicom.extra.map(json.loads)
    assert {e["kind"] for e in extra} == {"dicom"} and sorted(
        e["instance"] for e in extra
    ) == sorted(2 * list(range(1, SLICES + 1)))

    for patient, rows in df.groupby(df.path.str.split("/").str[0]):
        assert set(rows.patient_key) == {privacy.salted_key(patient)}
    assert df.patient_key.nunique() == 4
    assert all(re.fullmatch(r"f_[0-9a-f]{16}", s) for s in df.sample_id)
    assert df.sample_id.tolist() == [folder.sample_id(p) for p in df.path]
    assert df.loc["sub-001/anat/t1.nii.gz", "study"] == privacy.salted_key("sub-001/anat", "s")
    uid = pydicom.dcmread(
        root / "sub-002/dicom/IM-0001.dcm", stop_before_pixels=True
    ).StudyInstanceUID
    assert set(df[df.path.str.startswith("sub-002/")].study) == {privacy.salted_key(uid, "s")}
    assert (df.labels.map(len) == 0).all() and (df.source_split == "").all()


def test_no_identity_value_reaches_the_manifest_or_error_table(collection, tmp_path):
    root, _, out, *_ = collection
    # a truncated DICOM carrying the identity must fail without quoting it
    messy = tmp_path / "messy"
    shutil.copytree(root, messy)
    blob = (messy / "sub-002/dicom/IM-0003.dcm").read_bytes()
    (messy / "sub-002/dicom/IM-0003.dcm").write_bytes(blob[: len(blob) - 300])
    messy_out = tmp_path / "messy.parquet"
    counts, _, errors = _ingest(messy, messy_out)
    assert counts["failed"] == 1 and errors.reason.tolist() == ["truncated"]

    secrets = _identities(root)
    for value in ("FOLDERTEST^PATIENT002", "Synthetic Neuroimaging Institute", "SYNTH^REFERRER"):
        assert value in secrets
    assert any(v.startswith("MRN") for v in secrets) and any(v.startswith("MRACC") for v in secrets)
    for manifest_file in (out, messy_out):
        table = pq.read_table(manifest_file).to_pandas()
        text = table.astype(str).to_csv() + str(pq.read_schema(manifest_file).metadata)
        text += pd.read_parquet(errors_path(manifest_file)).astype(str).to_csv()
        raw = manifest_file.read_bytes() + errors_path(manifest_file).read_bytes()
        for value in secrets:
            assert value not in text and value.encode() not in raw, value


def test_a_dicom_whose_folder_spells_its_patient_is_refused_and_redacted(collection, tmp_path):
    """PACS exports name folders ``DOE_JOHN`` or by MRN: the manifest would have to store
    that path, so those files become ``path_names_patient`` error rows, the name redacted."""
    root, *_ = collection
    export = tmp_path / "export"
    shutil.copytree(root, export)
    mrn = pydicom.dcmread(export / "sub-002/dicom/IM-0001.dcm").PatientID
    (export / "sub-002").rename(export / "Foldertest_Patient002")  # the name, ^ as _
    (export / "sub-004/dicom").rename(export / f"sub-004/{mrn}-series")  # another's MRN: kept
    out = tmp_path / "export.parquet"
    counts, df, errors = _ingest(export, out)
    assert counts["failed"] == SLICES and set(errors.reason) == {"path_names_patient"}
    assert all(f.startswith("<redacted>/dicom/IM-") for f in errors.file)
    assert len(df) == 2 + SLICES and any(p.startswith("sub-004/") for p in df.path)
    text = (
        errors.astype(str).to_csv().lower()
        + pq.read_table(out).to_pandas().astype(str).to_csv().lower()
    )
    assert "patient002" not in text and "foldertest" not in text


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _grid(x: int = 5, y: int = 7, z: int = 4) -> np.ndarray:
    """(X, Y, Z) float32 with value 1000 k + 10 y + x at voxel (x, y, k)."""
    xi, yi, zi = np.meshgrid(np.arange(x), np.arange(y), np.arange(z), indexing="ij")
    return (1000 * zi + 10 * yi + xi).astype(np.float32)


def _mhd(path: Path, zyx: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    z, y, x = zyx.shape
    path.with_suffix(".raw").write_bytes(zyx.astype("<i2").tobytes())
    path.write_text(
        "ObjectType = Image\nNDims = 3\n"
        f"DimSize = {x} {y} {z}\nElementSpacing = 0.7 0.7 2.5\nElementType = MET_SHORT\n"
        f"ElementByteOrderMSB = False\nModality = MET_MOD_CT\nElementDataFile = {path.with_suffix('.raw').name}\n"
    )
    return path


def test_broken_stray_and_ignored_files(tmp_path):
    root = tmp_path / "root"
    synth_folder(root, cases=2, seed=3, size=SIZE, slices=SLICES)  # 1 NIfTI + a DICOM series
    nifti = root / "sub-001/anat/t1.nii.gz"
    shutil.copy(nifti, root / "stray.nii.gz")  # no patient folder
    (root / "sub-001/anat/broken.nii.gz").write_bytes(b"not a nifti at all")
    _nifti(root / "sub-001/anat/nan.nii", np.full((4, 4, 2), np.nan, np.float32))
    (root / "sub-002/dicom/notes.png").write_text("not an image")
    (root / "sub-003/export").mkdir(parents=True)
    dicom = root / "sub-002/dicom/IM-0002.dcm"
    shutil.copy(dicom, root / "sub-003/export/1.2.826.0.1.3680043.2.7")  # UID-named
    shutil.copy(dicom, root / "sub-003/export/IM0002")  # extensionless
    _nifti(root / "sub-004/grid.nii.gz", _grid())
    _mhd(root / "sub-005/ct/scan.mhd", np.arange(3 * 6 * 4).reshape(3, 6, 4))
    Image.fromarray(np.arange(60, dtype=np.uint8).reshape(6, 10)).save(root / "sub-005/xr.png")
    for ignored in (
        "sub-001/anat/t1.json",
        "sub-001/.DS_Store",
        ".hidden/x.dcm",
        "README.txt",
        "sub-002/DICOMDIR",
    ):
        (root / ignored).parent.mkdir(parents=True, exist_ok=True)
        (root / ignored).write_text("ignored")

    counts, df, errors = _ingest(root, tmp_path / "m.parquet")
    assert counts["found"] == counts["ingested"] + counts["failed"]
    assert counts["failed_by_reason"] == {"nan_volume": 1, "no_patient_folder": 1, "unreadable": 2}
    assert dict(zip(errors.file, errors.reason, strict=True)) == {
        "stray.nii.gz": "no_patient_folder",
        "sub-001/anat/broken.nii.gz": "unreadable",
        "sub-001/anat/nan.nii": "nan_volume",
        "sub-002/dicom/notes.png": "unreadable",
    }
    assert counts["ingested"] == 1 + SLICES + 2 + 1 + 1 + 1
    assert set(
        df.loc[["sub-003/export/1.2.826.0.1.3680043.2.7", "sub-003/export/IM0002"], "modality"]
    ) == {"MR"}
    grid = df.loc["sub-004/grid.nii.gz"]
    assert (grid.depth, grid.height, grid.width, grid.modality) == (4, 7, 5, "")
    mhd = df.loc["sub-005/ct/scan.mhd"]
    assert (mhd.depth, mhd.height, mhd.width, mhd.modality) == (3, 6, 4, "")
    assert json.loads(mhd.extra) == {"kind": "mhd", "header_modality": "CT"}
    png = df.loc["sub-005/xr.png"]
    assert (png.depth, png.height, png.width, list(png.spacing)) == (1, 6, 10, [])
    assert not any(
        p.endswith((".raw", ".json", "README.txt", "DICOMDIR")) or "/." in p for p in df.path
    )


def test_a_root_without_image_files_is_a_layout_error(tmp_path):
    (tmp_path / "sub-001").mkdir()
    (tmp_path / "sub-001" / "notes.txt").write_text("x")
    with pytest.raises(LayoutError, match="no DICOM, NIfTI, PNG or MHD"):
        _ingest(tmp_path, tmp_path / "m.parquet")


def test_synth_is_deterministic_in_seed(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for root, seed in ((a, 5), (b, 5), (c, 6)):
        synth_folder(root, cases=2, seed=seed, size=16, slices=4)
    hashes = [
        run_ingest("folder", r, tmp_path / f"{r.name}.parquet", workers=1)["hash"]
        for r in (a, b, c)
    ]
    assert hashes[0] == hashes[1] != hashes[2]
    row = {"path": "sub-002/dicom/IM-0003.dcm"}
    np.testing.assert_array_equal(read_slice(a, row, 0), read_slice(b, row, 0))
    assert not np.array_equal(read_slice(a, row, 0), read_slice(c, row, 0))


# ---------------------------------------------------------------------------- slices


def test_nifti_slice_k_is_the_axial_plane_with_anterior_up(tmp_path):
    vol = _grid()
    ras = _nifti(tmp_path / "ras.nii.gz", vol)
    # the same voxels stored with x and y reversed (an LPS-style export): RAS after reading
    lps = _nifti(tmp_path / "lps.nii", vol[::-1, ::-1].copy(), np.diag([-1.0, -1.0, 1.0, 1.0]))
    for path in (ras, lps):
        row = {"path": path.name, "depth": 4, "height": 7, "width": 5}
        for k in range(4):
            got = read_slice(tmp_path, row, k)
            assert got.dtype == np.float32 and got.shape == (7, 5)
            np.testing.assert_array_equal(got, np.flipud(vol[:, :, k].T))
            assert got[0, 0] == 1000 * k + 10 * 6  # top row = largest y = anterior
        with pytest.raises(ReadError, match=re.escape(path.name)) as err:
            read_slice(tmp_path, row, 4)
        assert err.value.code == "slice_out_of_range"
        with pytest.raises(ReadError, match="slice index -1"):
            read_slice(tmp_path, row, -1)


def test_nifti_int16_with_scaling_comes_back_in_scaled_units(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "hu.nii.gz"))
    got = read_slice(tmp_path, {"path": "hu.nii.gz"}, 1)
    expected = 2.0 * np.arange(24).reshape(2, 3, 4)[:, :, 1] - 1024
    np.testing.assert_array_equal(got, np.flipud(expected.T))


def test_mhd_slice_is_the_z_plane_as_stored(tmp_path):
    zyx = np.arange(3 * 6 * 4).reshape(3, 6, 4) - 1000
    _mhd(tmp_path / "s" / "scan.mhd", zyx)
    row = {"path": "s/scan.mhd", "depth": 3, "height": 6, "width": 4}
    for k in range(3):
        np.testing.assert_array_equal(read_slice(tmp_path, row, k), zyx[k].astype(np.float32))
    with pytest.raises(ReadError, match="outside 0..2"):
        read_slice(tmp_path, row, 3)


def test_png_gray_and_rgb_and_a_wrong_manifest_shape(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    for name in ("g.png", "rgb.png"):
        np.testing.assert_array_equal(
            read_slice(tmp_path, {"path": name, "depth": 1, "height": 6, "width": 10}, 0), gray
        )
    with pytest.raises(ReadError, match="outside 0..0"):
        read_slice(tmp_path, {"path": "g.png"}, 1)
    with pytest.raises(ReadError, match="manifest says") as err:
        read_slice(tmp_path, {"path": "g.png", "depth": 1, "height": 10, "width": 6}, 0)
    assert err.value.code == "shape_mismatch"


def _multiframe(
    path: Path,
    frames: np.ndarray,
    rescale: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
) -> Path:
    write_dicom(
        path,
        frames[0],
        Identity("PID-MF-1"),
        modality="CT",
        rescale=rescale,
        photometric=photometric,
    )
    ds = pydicom.dcmread(str(path))
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.ascontiguousarray(frames.astype(np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_frames_and_single_files_in_hounsfield_units(tmp_path):
    frames = np.stack([np.full((4, 6), 100 * (k + 1)) + np.arange(6) for k in range(3)])
    _multiframe(tmp_path / "mf.dcm", frames, rescale=(1, -1024))
    row = {"path": "mf.dcm", "depth": 3, "height": 4, "width": 6}
    for k in range(3):
        np.testing.assert_array_equal(read_slice(tmp_path, row, k), frames[k] - 1024.0)
    inverted = _multiframe(tmp_path / "m1.dicom", frames, photometric="MONOCHROME1")
    got = read_slice(tmp_path, {"path": inverted.name}, 2)
    np.testing.assert_array_equal(got, frames[2].max() + frames[2].min() - frames[2])
    write_dicom(
        tmp_path / "one",
        frames[1],
        Identity("PID-1"),
        modality="CT",
        rescale=(2, -1000),
        window=(40, 400),
    )
    np.testing.assert_array_equal(
        read_slice(tmp_path, {"path": "one"}, 0), 2.0 * frames[1] - 1000
    )  # no VOI window


def test_ingest_reads_multiframe_depth(tmp_path):
    frames = np.stack([np.full((4, 6), k) for k in range(5)])
    (tmp_path / "root" / "p1").mkdir(parents=True)
    _multiframe(tmp_path / "root" / "p1" / "mf.dcm", frames)
    counts, df, _ = _ingest(tmp_path / "root", tmp_path / "m.parquet", workers=1)
    assert counts["ingested"] == 1 and (df.iloc[0].depth, df.iloc[0].height, df.iloc[0].width) == (
        5,
        4,
        6,
    )
    assert df.iloc[0].modality == "CT"


def test_slice_reader_decodes_each_volume_once_when_sorted(tmp_path, monkeypatch):
    a = _nifti(tmp_path / "a.nii.gz", _grid())
    b = _nifti(tmp_path / "b.nii.gz", _grid() + 5)
    calls: list[str] = []
    real = slices.read_nifti

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(slices, "read_nifti", counting)
    reader = SliceReader()
    for path in (a, b):
        row = {"path": path.name, "depth": 4, "height": 7, "width": 5}
        for k in range(4):
            np.testing.assert_array_equal(reader(tmp_path, row, k), read_slice(tmp_path, row, k))
    # 2 decodes by the reader (one per volume), 8 by read_slice (one per call)
    assert calls.count("a.nii.gz") == 1 + 4 and calls.count("b.nii.gz") == 1 + 4
    out = reader(tmp_path, {"path": "b.nii.gz"}, 0)
    out[:] = -1  # a copy: the memo is untouched
    assert reader(tmp_path, {"path": "b.nii.gz"}, 0)[0, 0] != -1 and calls.count("b.nii.gz") == 5
    copy = pickle.loads(pickle.dumps(reader))
    assert len(pickle.dumps(reader)) < 1000  # the memo does not travel
    copy(tmp_path, {"path": "b.nii.gz"}, 1)
    assert calls.count("b.nii.gz") == 6
