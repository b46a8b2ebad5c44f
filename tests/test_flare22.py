import shutil

import numpy as np
import pandas as pd
import pytest

from raysuite.data import manifest
from raysuite.data.datasets import errors_path, run_ingest
from raysuite.data.formats import flare22
from raysuite.data.ingest import LayoutError
from raysuite.data.readers import ReadError, read_nifti


@pytest.fixture(scope="module")
def flare_cases(flare_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("flare-manifest") / "m.parquet"
    counts = run_ingest("flare22", flare_root, out, workers=1)
    assert counts["found"] == counts["ingested"] == 10 and counts["failed"] == 0
    df, _ = manifest.read(out)
    return flare22.cases_from_manifest(df, flare_root)


def test_layout_and_cases(flare_root, flare_cases, tmp_path):
    cases = flare_cases
    assert int(cases.labelled.sum()) == 5 and int((~cases.labelled).sum()) == 5
    assert (flare_root / "FLARE22_LabeledCase50" / "labels" / "FLARE22_Tr_0001.nii.gz").exists()
    with pytest.raises(LayoutError, match="no \\*_0000.nii.gz"):
        run_ingest("flare22", tmp_path, tmp_path / "m.parquet")


def test_ingest_records_broken_cases(flare_root, tmp_path):
    import nibabel as nib

    root = tmp_path / "flare"
    shutil.copytree(flare_root, root)
    labelled = root / "FLARE22_LabeledCase50"
    blob = (labelled / "images" / "FLARE22_Tr_0001_0000.nii.gz").read_bytes()
    (labelled / "images" / "FLARE22_Tr_0001_0000.nii.gz").write_bytes(blob[: len(blob) // 3])
    label = nib.load(str(labelled / "labels" / "FLARE22_Tr_0002.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:-2], label.affine), str(labelled / "labels" / "FLARE22_Tr_0002.nii.gz"))
    nan = np.zeros((8, 8, 4), np.float32)
    nan[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(labelled / "images" / "FLARE22_Tr_0003_0000.nii.gz"))
    four_d = np.zeros((8, 8, 4, 2), np.int16)
    nib.save(nib.Nifti1Image(four_d, np.eye(4)), str(next(root.glob("FLARE22_Unlabeled*")) / "Case_00001_0000.nii.gz"))
    out = tmp_path / "m.parquet"
    counts = run_ingest("flare22", root, out, workers=2)
    assert counts["found"] == 10 == counts["ingested"] + counts["failed"]
    errors = pd.read_parquet(errors_path(out)).set_index("sample_id")
    assert errors.reason.to_dict() == {
        "FLARE22_Tr_0001": "unreadable",
        "FLARE22_Tr_0002": "shape_mismatch",
        "FLARE22_Tr_0003": "nan_volume",
        "Case_00001": "needs_volume_index",
    }
    df, _ = manifest.read(out)
    assert len(df) == 6 and not set(df.sample_id) & {"FLARE22_Tr_0001", "FLARE22_Tr_0002", "FLARE22_Tr_0003"}


def test_nifti_is_ct_in_hu_with_spacing(flare_root):
    path = flare_root / "FLARE22_LabeledCase50" / "images" / "FLARE22_Tr_0001_0000.nii.gz"
    import nibabel as nib

    img = nib.load(str(path))
    assert img.get_data_dtype() == np.int16
    data, meta = read_nifti(path)
    assert data.min() <= -990 and data.max() > 100
    assert meta.spacing[2] >= 2.5 and meta.affine[0, 0] > 0  # reoriented to RAS


def test_preprocessing_follows_seed(flare_cases):
    row = flare_cases[flare_cases.labelled].iloc[-1]
    image, label = flare22.preprocess(row.image, row.label, flare22.Preprocessing())
    assert image.shape == label.shape and image.shape[1] >= 96 and image.shape[2] >= 96
    assert image.min() >= 0 and image.max() <= 1
    assert set(np.unique(label)) <= set(range(14)) and len(np.unique(label)) > 8
    # organs sit inside the body: labelled voxels are not air
    assert image[label > 0].min() > 0


def test_splits_are_per_case(flare_cases):
    cases = flare22.split_cases(flare_cases, 2, 2, split_seed=0)
    assert (cases.split == "train").sum() == 2 and (cases.split == "val").sum() == 2
    with pytest.raises(ValueError, match="need 4 train"):
        flare22.split_cases(cases, 4, 2)


def test_nan_volume_is_refused(tmp_path):
    import nibabel as nib

    path = tmp_path / "bad.nii.gz"
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(ReadError, match="NaN"):
        read_nifti(path)
