import numpy as np
import pytest

from raysuite.data.formats import flare22
from raysuite.data.readers import ReadError, read_nifti


def test_layout_and_cases(flare_root):
    cases = flare22.find_cases(flare_root)
    assert int(cases.labelled.sum()) == 5 and int((~cases.labelled).sum()) == 5
    assert (flare_root / "FLARE22_LabeledCase50" / "labels" / "FLARE22_Tr_0001.nii.gz").exists()


def test_nifti_is_ct_in_hu_with_spacing(flare_root):
    path = flare_root / "FLARE22_LabeledCase50" / "images" / "FLARE22_Tr_0001_0000.nii.gz"
    import nibabel as nib

    img = nib.load(str(path))
    assert img.get_data_dtype() == np.int16
    data, meta = read_nifti(path)
    assert data.min() <= -990 and data.max() > 100
    assert meta.spacing[2] >= 2.5 and meta.affine[0, 0] > 0  # reoriented to RAS


def test_preprocessing_follows_seed(flare_root):
    row = flare22.find_cases(flare_root).iloc[-1]
    image, label = flare22.preprocess(row.image, row.label, flare22.Preprocessing())
    assert image.shape == label.shape and image.shape[1] >= 96 and image.shape[2] >= 96
    assert image.min() >= 0 and image.max() <= 1
    assert set(np.unique(label)) <= set(range(14)) and len(np.unique(label)) > 8
    # organs sit inside the body: labelled voxels are not air
    assert image[label > 0].min() > 0


def test_splits_are_per_case(flare_root):
    cases = flare22.split_cases(flare22.find_cases(flare_root), 2, 2, split_seed=0)
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
