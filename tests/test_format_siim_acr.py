"""SIIM-ACR Pneumothorax: the RLE codec, synth -> ingest round trip, broken inputs, privacy."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from raysuite.data import manifest, rle
from raysuite.data.datasets import errors_path, run_ingest
from raysuite.data.formats import siim_acr
from raysuite.data.ingest import LayoutError
from raysuite.data.readers import read_dicom
from raysuite.data.synth.dicom_writer import Identity, write_dicom
from raysuite.data.synth.siim_acr import synth as synth_siim_acr

SIZE = 64
IDENTITY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
    "ReferringPhysicianName", "OtherPatientIDs",
)  # fmt: skip

# The hand-worked 4x4 example. Column-major flat: 0111 0011 1000 0011, so the runs
# (absolute start, length) are (1, 3) (6, 3) (14, 2); the second run crosses from column 1
# into column 2 and the last one ends on the last pixel. Relative starts: 1, 6 - 4 = 2,
# 14 - 9 = 5.
HAND = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [1, 1, 0, 1], [1, 1, 0, 1]], np.uint8)
HAND_RLE = "1 3 2 3 5 2"


# ------------------------------------------------------------------ Kaggle reference


def kaggle_rle2mask(encoding: str, width: int, height: int) -> np.ndarray:
    """The competition's ``mask_functions.rle2mask`` (called as ``rle2mask(...).T``)."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in encoding.split()])
    current = 0
    for start, length in zip(array[0::2], array[1::2], strict=True):
        current += start
        mask[current : current + length] = 255
        current += length
    return mask.reshape(width, height)


def kaggle_mask2rle(img: np.ndarray, width: int, height: int) -> str:
    """The competition's ``mask_functions.mask2rle`` (called with ``mask.T * 255``)."""
    out, last, current, run_start, run_length = [], 0, 0, -1, 0
    for x in range(width):
        for y in range(height):
            colour = img[x][y]
            if colour != last:
                if colour == 255:
                    run_start, run_length = current, 1
                else:
                    out += [str(run_start), str(run_length)]
                    run_start, run_length, current = -1, 0, 0
            elif run_start > -1:
                run_length += 1
            last = colour
            current += 1
    return " ".join(out)


# ------------------------------------------------------------------------- helpers


def read_annotations(root: Path, name: str = "train-rle.csv") -> dict[str, list[str]]:
    """ImageId -> stripped encodings, read with the csv module (not the code under test)."""
    out: dict[str, list[str]] = {}
    with open(root / name, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for fields in reader:
            if len(fields) == 2 and fields[0].strip():  # well-formed lines only
                out.setdefault(fields[0].strip(), []).append(fields[1].strip())
    return out


def dicoms(root: Path) -> dict[str, Path]:
    """ImageId -> file, at exactly <folder>/<study>/<series>/<image>.dcm."""
    return {p.stem: p for p in sorted(root.glob("dicom-images-*/*/*/*.dcm"))}


def identity_strings(root: Path) -> set[str]:
    values = set()
    for path in dicoms(root).values():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # the broken files of the corrupted root
            continue
        values |= {str(ds.get(k, "")) for k in IDENTITY_KEYWORDS} - {""}
    return values


def expected_mask(encodings: list[str], height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    for encoding in encodings:
        if encoding != "-1":
            mask |= (kaggle_rle2mask(encoding, width, height).T > 0).astype(np.uint8)
    return mask


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim")
    counts = synth_siim_acr(root, cases=12, seed=0, size=SIZE)
    assert counts == {
        "train": 12,
        "test": 3,
        "positive": 4,
        "regions": 5,
        "patients": 12,
        "csv_rows": 13,
    }
    return root


@pytest.fixture(scope="module")
def ingested(siim_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("siim-manifest") / "m.parquet"
    counts = run_ingest("siim_acr", siim_root, out, workers=1)
    df, meta = manifest.read(out)
    return counts, df.set_index("sample_id", drop=False), out


# ------------------------------------------------------------------------------ RLE


def test_rle_hand_worked_example():
    assert rle.encode(HAND) == HAND_RLE
    assert np.array_equal(rle.decode(HAND_RLE, 4, 4), HAND)
    # the same mask as two regions, OR-ed: "1 3" is run (1, 3); "6 3 5 2" is (6, 3) (14, 2)
    assert np.array_equal(rle.decode_many(["1 3", "6 3 5 2", "-1"], 4, 4), HAND)
    starts, lengths = rle.runs(HAND_RLE)
    assert starts.tolist() == [1, 6, 14] and lengths.tolist() == [3, 3, 2]
    assert rle.extent(HAND_RLE) == 16 and rle.extent("-1") == 0
    # not the absolute, 1-based RLE of other Kaggle competitions: read as relative, it overruns
    with pytest.raises(rle.RLEOverrunError, match="runs end at pixel 32, past the 4x4 image"):
        rle.decode("2 3 7 3 15 2", 4, 4)
    assert rle.encode(np.zeros((4, 4))) == "-1"
    assert not rle.decode("-1", 3, 5).any() and rle.decode(" -1 ", 3, 5).shape == (3, 5)
    # non-square: (H, W) = (2, 3); column-major flat index 3 is row 1, column 1
    assert rle.decode("3 1", 2, 3).tolist() == [[0, 0, 0], [0, 1, 0]]


def test_rle_matches_the_competition_functions_on_the_hand_example():
    assert np.array_equal(kaggle_rle2mask(HAND_RLE, 4, 4).T > 0, HAND > 0)
    # the competition encoder drops a run that reaches the last pixel; ours keeps it
    assert kaggle_mask2rle(HAND.T * 255, 4, 4) == "1 3 2 3"


@settings(max_examples=150, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(0, 1))
)
def test_rle_round_trip_and_reference(mask):
    height, width = mask.shape
    encoding = rle.encode(mask)
    assert np.array_equal(rle.decode(encoding, height, width), mask)
    if mask.any():
        assert np.array_equal(kaggle_rle2mask(encoding, width, height).T > 0, mask > 0)
        assert rle.extent(encoding) <= mask.size
    else:
        assert encoding == "-1"
    if mask.any() and not mask.T.ravel()[-1]:  # exact unless a run hits the end ("" when empty)
        assert kaggle_mask2rle(mask.T * 255, width, height) == encoding


@settings(max_examples=50, deadline=None)
@given(st.lists(arrays(np.uint8, (5, 7), elements=st.integers(0, 1)), min_size=1, max_size=4))
def test_decode_many_is_the_union(masks):
    union = np.bitwise_or.reduce(np.stack(masks), axis=0)
    assert np.array_equal(rle.decode_many([rle.encode(m) for m in masks], 5, 7), union)


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 x", "non-integer"),
        ("1.5 2", "non-integer"),
        ("-3 2", "negative"),
        ("1 -2", "negative"),
        ("1 0", "length 0"),
        ("", "empty encoding"),
        ("   ", "empty encoding"),
        ("10 7", "past the 4x4 image"),
        ("1 1 14 1", "past the 4x4 image"),  # starts at 2 + 14 = 16, one past the end
        ("99999999999999999999 1", "too large"),
    ],
)
def test_rle_rejects_malformed(encoding, message):
    with pytest.raises(rle.RLEError, match=message):
        rle.decode(encoding, 4, 4)


def test_rle_overrun_is_a_distinct_error():
    assert rle.decode("0 16", 4, 4).all()
    with pytest.raises(rle.RLEOverrunError, match="runs end at pixel 17, past the 4x4 image") as info:
        rle.decode("0 17", 4, 4)
    assert info.value.needed == 17 and (info.value.height, info.value.width) == (4, 4)


# ---------------------------------------------------------------------------- synth


def test_synth_writes_the_published_layout(siim_root, tmp_path):
    text = (siim_root / "train-rle.csv").read_text()
    assert text.startswith("ImageId, EncodedPixels\n")
    assert ", -1\n" in text
    annotations = read_annotations(siim_root)
    files = dicoms(siim_root)
    train = {k for k, p in files.items() if p.parts[-4] == "dicom-images-train"}
    assert len(train) == 12 and len(files) == 15 and set(annotations) == train
    assert sum(len(v) == 2 for v in annotations.values()) == 1  # one image with two regions
    path = next(iter(files.values()))
    ds = pydicom.dcmread(path)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert (path.parent.parent.name, path.parent.name, path.stem) == uids
    assert ds.SOPInstanceUID.startswith("1.2.276.0.7230010.3.1.4.8323329.")
    assert (ds.Rows, ds.Columns, ds.BitsStored, ds.Modality) == (SIZE, SIZE, 8, "CR")
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.ViewPosition in ("PA", "AP")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    # deterministic: the same seed writes the same bytes
    again = tmp_path / "again"
    synth_siim_acr(again, cases=12, seed=0, size=SIZE)

    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip

    assert digest(again) == digest(siim_root)


def test_phantom_shows_the_pneumothorax_where_the_mask_is(siim_root):
    annotations = read_annotations(siim_root)
    files = dicoms(siim_root)
    for image_id, encodings in annotations.items():
        pixels, _ = read_dicom(files[image_id])
        mask = expected_mask(encodings, SIZE, SIZE).astype(bool)
        if "-1" in encodings:
            assert not mask.any()
            continue
        lung_level = np.median(pixels[(pixels > 40) & (pixels < 120) & ~mask])
        assert pixels[mask].mean() < lung_level - 25, image_id  # a dark crescent...
        assert np.percentile(pixels[mask], 90) < lung_level  # ...dark throughout


# --------------------------------------------------------------------------- ingest


def test_round_trip(siim_root, ingested):
    counts, df, _ = ingested
    assert (counts["found"], counts["ingested"], counts["failed"]) == (15, 15, 0)
    annotations = read_annotations(siim_root)
    files = dicoms(siim_root)
    assert set(df.index) == set(files)
    for image_id, path in files.items():
        row = df.loc[image_id]
        assert (
            row.path == path.relative_to(siim_root).as_posix() and (siim_root / row.path).is_file()
        )
        assert (row.height, row.width, row.depth, row.modality) == (SIZE, SIZE, 1, "CR")
        assert np.allclose(row.spacing, [0.168 * 1024 / SIZE] * 2, atol=1e-3)
        extra = json.loads(row.extra)
        if image_id not in annotations:  # stage-1 test images: unlabelled
            assert row.source_split == "test" and extra["labelled"] is False
            assert row.labels == [] and row["mask"] is None
            continue
        assert row.source_split == "train" and extra["labelled"] is True
        want = expected_mask(annotations[image_id], SIZE, SIZE)
        got = siim_acr.mask_array(row)
        assert np.array_equal(got, want), image_id
        assert row.labels == (["Pneumothorax"] if want.any() else [])
        assert (row["mask"] is None) == (not want.any())
        assert extra["regions"] == sum(e != "-1" for e in annotations[image_id])
        assert extra["mask_pixels"] == int(want.sum())
        assert row.boxes == []


def test_patients_are_salted_keys_and_studies_group(siim_root, ingested):
    _, df, _ = ingested
    patient_of = {}
    for image_id, path in dicoms(siim_root).items():
        patient_of[image_id] = str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)
    assert len(set(patient_of.values())) == 12 < len(patient_of)  # three patients have two studies
    assert df.patient_key.str.fullmatch(r"p_[0-9a-f]{16}").all()
    assert df.study.str.fullmatch(r"s_[0-9a-f]{16}").all() and df.study.is_unique
    for a in patient_of:
        for b in patient_of:
            same = patient_of[a] == patient_of[b]
            assert (df.loc[a].patient_key == df.loc[b].patient_key) == same
    assert df.groupby("patient_key").split.nunique().max() == 1


def test_stage2_csv_labels_the_test_images(tmp_path):
    root = tmp_path / "stage2"
    counts = synth_siim_acr(root, cases=4, seed=1, size=32, stage=2)
    assert not (root / "train-rle.csv").exists()
    assert (root / "stage_2_train.csv").read_text().startswith("ImageId,EncodedPixels\n")
    assert ",-1\n" in (root / "stage_2_train.csv").read_text()
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n")  # stage 2 takes precedence
    out = tmp_path / "m.parquet"
    result = run_ingest("siim_acr", root, out, workers=1)
    assert (result["found"], result["ingested"]) == (5, 5) and counts["test"] == 1
    df, _ = manifest.read(out)
    test = df[df.source_split == "test"].iloc[0]
    assert (
        json.loads(test.extra)["labelled"] is True
        and json.loads(test.extra)["csv"] == "stage_2_train.csv"
    )
    annotations = read_annotations(root, "stage_2_train.csv")
    assert np.array_equal(
        siim_acr.mask_array(test), expected_mask(annotations[test.sample_id], 32, 32)
    )
    assert sum(len(r) > 0 for r in df.labels) == counts["positive"] == 3


# ---------------------------------------------------------------------- preprocessing


def test_preprocessing_follows_seed_004():
    assert siim_acr.SEGMENTER.size == 256 and siim_acr.CLASSIFIER.size == 224  # Tables 4.2-4.4
    assert siim_acr.Preprocessing().key() != siim_acr.Preprocessing(size=224).key()


def test_preprocess_and_target_mask(siim_root, ingested):
    _, df, _ = ingested
    positive = df[df.labels.map(len) > 0].iloc[0]
    raw, _ = read_dicom(siim_root / positive.path)
    same = siim_acr.preprocess(siim_root, positive, siim_acr.Preprocessing(size=SIZE))
    assert same.dtype == np.float32 and np.allclose(same, raw / 255.0)  # 8-bit grey / 255
    prep = siim_acr.Preprocessing(size=48)
    image = siim_acr.preprocess(siim_root, positive, prep)
    target = siim_acr.target_mask(positive, prep)
    assert image.shape == target.shape == (48, 48) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and target.dtype == np.uint8
    assert set(np.unique(target)) == {0, 1}
    assert abs(target.mean() - siim_acr.mask_array(positive).mean()) < 0.02
    assert (
        image[target > 0].mean()
        < image[(target == 0) & (image > 0.15) & (image < 0.5)].mean() - 0.08
    )
    negative = df[(df.labels.map(len) == 0)].iloc[0]
    assert not siim_acr.target_mask(negative, prep).any()


def test_target_mask_hand_worked():
    row = {"sample_id": "x", "height": 4, "width": 4, "mask": "rle:" + HAND_RLE}
    assert np.array_equal(siim_acr.mask_array(row), HAND)
    # nearest, 4 -> 8: every pixel becomes a 2x2 block
    assert np.array_equal(
        siim_acr.target_mask(row, siim_acr.Preprocessing(size=8)),
        np.kron(HAND, np.ones((2, 2), np.uint8)),
    )
    assert not siim_acr.target_mask({**row, "mask": None}, siim_acr.Preprocessing(size=8)).any()


# -------------------------------------------------------------------- broken inputs


@pytest.fixture(scope="module")
def corrupted(siim_root, tmp_path_factory):
    """The synthetic root with one fault per image, ingested with two workers."""
    root = tmp_path_factory.mktemp("siim-broken") / "root"
    shutil.copytree(siim_root, root)
    annotations = read_annotations(root)
    files = dicoms(root)
    train = sorted(annotations)
    two_regions = next(i for i in train if len(annotations[i]) == 2)
    positives = [i for i in train if annotations[i] != ["-1"] and i != two_regions]
    mismatch = positives[0]
    assert rle.extent(annotations[mismatch][0]) > 32 * 32  # the mask cannot fit a 32x32 image
    others = [i for i in train if i not in (two_regions, mismatch)]
    overrun, truncated, deleted, no_pixels, undecodable, not_dicom, bad_line = others[:7]
    kept = others[7:]
    lines = [
        f"{two_regions}, 1 2 3\n",  # one malformed region: the image fails whole
        f"{overrun}, 5000 10\n",  # runs past any 64x64 image
        f"{bad_line}, 1 2, 3 4\n",  # three fields
        ", -1\n",  # no ImageId
        "1.2.276.0.7230010.3.1.4.8323329.99999.1517875999.999999, -1\n",  # no such DICOM
    ]
    with open(root / "train-rle.csv", "a") as f:
        f.writelines(lines)
    blob = files[truncated].read_bytes()
    files[truncated].write_bytes(blob[: len(blob) // 2])
    files[deleted].unlink()
    ds = pydicom.dcmread(files[no_pixels])
    del ds.PixelData
    ds.save_as(files[no_pixels])
    ds = pydicom.dcmread(files[undecodable])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    ds.save_as(files[undecodable], enforce_file_format=True)
    files[not_dicom].write_text("this is not a DICOM file\n")
    small = np.full((32, 32), 90, np.uint8)
    write_dicom(files[mismatch], small, Identity("11111111-2222-4333-8444-555555555555", "SHRUNK^PATIENT"),
                modality="CR", bits_stored=8)  # fmt: skip
    stray = root / "dicom-images-train" / "1.2.3.4" / "1.2.3.4.5" / "1.2.3.4.5.6.dcm"
    stray.parent.mkdir(parents=True)
    shutil.copy(files[kept[0]], stray)
    dup = root / "dicom-images-test" / "9.9" / "9.9.9" / files[kept[1]].name
    dup.parent.mkdir(parents=True)
    shutil.copy(files[kept[1]], dup)
    expected = sorted(
        [
            (two_regions, "malformed_rle"),
            (overrun, "malformed_rle"),
            (truncated, "truncated"),
            (deleted, "missing_file"),
            (no_pixels, "no_pixel_data"),
            (undecodable, "undecodable_transfer_syntax"),
            (not_dicom, "not_dicom"),
            (bad_line, "bad_csv_row"),
            (mismatch, "shape_mismatch"),
            ("", "bad_csv_row"),
            ("1.2.276.0.7230010.3.1.4.8323329.99999.1517875999.999999", "missing_file"),
            ("1.2.3.4.5.6", "no_annotation"),
            (kept[1], "duplicate_image"),
        ]
    )
    out = tmp_path_factory.mktemp("siim-broken-manifest") / "m.parquet"
    counts = run_ingest("siim_acr", root, out, workers=2)
    return root, out, counts, expected, kept, two_regions


def test_broken_inputs_become_error_rows(corrupted):
    root, out, counts, expected, kept, two_regions = corrupted
    errors = pd.read_parquet(errors_path(out))
    assert sorted(zip(errors.sample_id, errors.reason, strict=True)) == expected
    df, _ = manifest.read(out)
    # 12 train ImageIds (one now only in the CSV) + 3 test images + 4 added samples
    assert counts["found"] == counts["ingested"] + counts["failed"] == 19
    assert (counts["ingested"], counts["failed"]) == (len(df), len(expected)) == (6, 13)
    assert counts["failed_by_reason"] == {
        "bad_csv_row": 2, "duplicate_image": 1, "malformed_rle": 2, "missing_file": 2, "no_annotation": 1,
        "no_pixel_data": 1, "not_dicom": 1, "shape_mismatch": 1, "truncated": 1, "undecodable_transfer_syntax": 1,
    }  # fmt: skip
    test_images = {p.stem for p in root.glob("dicom-images-test/*/*/*.dcm")} - {kept[1]}
    assert set(df.sample_id) == set(kept) | test_images
    annotations = read_annotations(root)
    rows = df.set_index("sample_id", drop=False)
    for image_id in kept:  # the surviving samples are intact
        assert np.array_equal(
            siim_acr.mask_array(rows.loc[image_id]),
            expected_mask(annotations[image_id], SIZE, SIZE),
        )
    detail = errors.set_index("reason").detail
    assert "32x32" in detail["shape_mismatch"] and "64x64" in detail["shape_mismatch"]
    assert "odd number of tokens" in errors[errors.sample_id == two_regions].detail.iloc[0]
    assert not errors.file.map(lambda f: Path(f).is_absolute()).any()  # files relative to the root


def test_csv_missing_a_column_is_a_layout_error(siim_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(siim_root, root)
    (root / "train-rle.csv").write_text("ImageId, Pixels\n1.2.3, -1\n")
    with pytest.raises(LayoutError, match="EncodedPixels"):
        run_ingest("siim_acr", root, tmp_path / "m.parquet")


def test_other_roots_are_layout_errors(siim_root, tmp_path):
    with pytest.raises(LayoutError, match="dicom-images-train"):
        run_ingest("siim_acr", tmp_path, tmp_path / "m.parquet")
    (tmp_path / "dicom-images-train").mkdir()
    with pytest.raises(LayoutError, match="train-rle.csv"):
        run_ingest("siim_acr", tmp_path, tmp_path / "m.parquet")


def test_no_identity_reaches_manifest_or_errors(siim_root, ingested, corrupted):
    _, _, clean_out = ingested
    root, broken_out, *_ = corrupted
    secrets = identity_strings(siim_root) | identity_strings(root)
    assert {"Synthetic Chest Clinic", "PTXSYNTH^PATIENT0001", "PTXACC000001"} <= secrets
    assert any(s.count("-") == 4 for s in secrets)  # the UUID-style PatientIDs
    blob = next(iter(dicoms(siim_root).values())).read_bytes()
    assert b"Synthetic Chest Clinic" in blob  # the search below would find them
    for path in (clean_out, errors_path(clean_out), broken_out, errors_path(broken_out)):
        raw = path.read_bytes()
        text = pd.read_parquet(path).to_json()
        for secret in secrets:
            assert secret.encode() not in raw and secret not in text, (path.name, secret)
