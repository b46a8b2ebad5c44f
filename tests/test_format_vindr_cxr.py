"""VinDr-CXR format: synth -> run_ingest round trip, box fusion, preprocessing, failures."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from raysuite.data import intensity, manifest
from raysuite.data.datasets import errors_path, run_ingest
from raysuite.data.formats import vindr_cxr as vd
from raysuite.data.ingest import LayoutError, Ledger
from raysuite.data.synth.dicom_writer import Identity, write_dicom
from raysuite.data.synth.vindr_cxr import synth as synth_vindr_cxr

COORDS = ["x_min", "y_min", "x_max", "y_max"]
CASES = 12


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    """A Kaggle-layout root (12 labelled + 2 unlabelled test images) and its manifest."""
    root = tmp_path_factory.mktemp("vindr_kaggle")
    counts = synth_vindr_cxr(root, cases=CASES, seed=0, test_cases=2)
    out = tmp_path_factory.mktemp("vindr_kaggle_out") / "manifest.parquet"
    result = run_ingest("vindr_cxr", root, out, workers=1)
    df, meta = manifest.read(out)
    return {"root": root, "counts": counts, "out": out, "result": result, "df": df, "meta": meta}


def _components(boxes: np.ndarray) -> list[list[int]]:
    """Groups of boxes linked by any positive overlap (independent of fuse_boxes)."""
    parent = list(range(len(boxes)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _expected(csv: Path) -> dict[str, dict]:
    """Per image from synth's CSV: labels, fused boxes (synth's findings never touch each
    other and one finding's boxes always overlap, so overlap components are the clusters),
    raw box count and boxes per radiologist."""
    df = pd.read_csv(csv, dtype={"image_id": str, "rad_id": str})
    out = {}
    for image_id, g in df.groupby("image_id"):
        finds = g[g.class_name != "No finding"]
        boxes = []
        for label, gc in finds.groupby("class_name"):
            arr = gc[COORDS].to_numpy(float)
            for comp in _components(arr):
                boxes.append((vd.CLASS_IDS[label], label, *arr[comp].mean(0), len(comp)))
        out[image_id] = {
            "labels": sorted(set(finds.class_name), key=vd.CLASS_IDS.get),
            "boxes": sorted(boxes),
            "raw": len(finds),
            "per_rad": {r: int((finds.rad_id == r).sum()) for r in sorted(set(g.rad_id))},
        }
    return out


# -------------------------------------------------------------------------- fusion


def test_fuse_boxes_hand_worked():
    w, h = 100, 200
    boxes = [
        # class A: R1 and R2 agree (IoU 0.25) -> (3, 0, 13, 10); R3 overlaps R1 alone with IoU
        # 0.0526 but the running mean with 0.25 -> joins: (5, 0, 15, 10), readers 3.
        {"label": "Cardiomegaly", "x_min": 0, "y_min": 0, "x_max": 10, "y_max": 10, "rad_id": "R1"},
        {"label": "Cardiomegaly", "x_min": 6, "y_min": 0, "x_max": 16, "y_max": 10, "rad_id": "R2"},
        {"label": "Cardiomegaly", "x_min": 9, "y_min": 0, "x_max": 19, "y_max": 10, "rad_id": "R3"},
        # class E: R1 twice on nearly the same spot (IoU 0.82): one radiologist never merges
        # with itself, so R1's second box stays alone; R2 then joins the better match (IoU 1
        # with R1's first box, 0.82 with the second).
        {
            "label": "Pleural effusion",
            "x_min": 21,
            "y_min": 20,
            "x_max": 31,
            "y_max": 30,
            "rad_id": "R1",
        },
        {
            "label": "Pleural effusion",
            "x_min": 20,
            "y_min": 20,
            "x_max": 30,
            "y_max": 30,
            "rad_id": "R2",
        },
        {
            "label": "Pleural effusion",
            "x_min": 20,
            "y_min": 20,
            "x_max": 30,
            "y_max": 30,
            "rad_id": "R1",
        },
        # class B: IoU exactly 0.2 joins (>=): (0,0,10,10) & (0,0,10,2): 20 / 100.
        {
            "label": "Aortic enlargement",
            "x_min": 0,
            "y_min": 0,
            "x_max": 10,
            "y_max": 10,
            "rad_id": "R2",
        },
        {
            "label": "Aortic enlargement",
            "x_min": 0,
            "y_min": 0,
            "x_max": 10,
            "y_max": 2,
            "rad_id": "R3",
        },
        # class C: IoU 18/100 = 0.18 < 0.2 stays apart; different class from A never merges.
        {"label": "Nodule/Mass", "x_min": 0, "y_min": 0, "x_max": 10, "y_max": 10, "rad_id": "R1"},
        {"label": "Nodule/Mass", "x_min": 0, "y_min": 0, "x_max": 10, "y_max": 1.8, "rad_id": "R2"},
        # class D: two boxes without rad_id (consensus labels) stay apart though identical.
        {"label": "Pneumothorax", "x_min": 50, "y_min": 100, "x_max": 60, "y_max": 150},
        {"label": "Pneumothorax", "x_min": 50, "y_min": 100, "x_max": 60, "y_max": 150},
    ]
    got = vd.fuse_boxes(boxes, w, h)
    want = [
        ("Aortic enlargement", 0, 0, 10, 6, 2),
        ("Cardiomegaly", 5, 0, 15, 10, 3),
        ("Pleural effusion", 20, 20, 30, 30, 2),
        ("Pleural effusion", 21, 20, 31, 30, 1),
        ("Nodule/Mass", 0, 0, 10, 1.8, 1),
        ("Nodule/Mass", 0, 0, 10, 10, 1),
        ("Pneumothorax", 50, 100, 60, 150, 1),
        ("Pneumothorax", 50, 100, 60, 150, 1),
    ]
    as_tuples = [(b["label"], *(round(b[k], 6) for k in COORDS), b["readers"]) for b in got]
    key = lambda t: (vd.CLASS_IDS[t[0]], t[1:])  # noqa: E731
    assert sorted(as_tuples, key=key) == sorted(
        [(t[0], *map(float, t[1:5]), t[5]) for t in want], key=key
    )
    # the canonical visiting order makes the result independent of the CSV's row order
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [boxes[i] for i in rng.permutation(len(boxes))]
        assert vd.fuse_boxes(shuffled, w, h) == got


def test_fuse_boxes_rad_order_and_threshold():
    # Visited by rad_id whatever the input order: R1 (0,0,10,10); R2 (0,0,10,4) joins (IoU
    # 0.4) -> mean (0,0,10,7); R3 (0,4,10,10) against that mean: intersection 3*10, union
    # 70+60-30 = 100 -> IoU 0.3 joins -> (0, 4/3, 10, 8), readers 3. With threshold 0.35,
    # R2 still joins (0.4) but R3 (0.3) stays alone.
    boxes = [
        {"label": "ILD", "x_min": 0, "y_min": 4, "x_max": 10, "y_max": 10, "rad_id": "R3"},
        {"label": "ILD", "x_min": 0, "y_min": 0, "x_max": 10, "y_max": 4, "rad_id": "R2"},
        {"label": "ILD", "x_min": 0, "y_min": 0, "x_max": 10, "y_max": 10, "rad_id": "R1"},
    ]
    (one,) = vd.fuse_boxes(boxes, 10, 10)
    assert one["readers"] == 3
    assert [one[k] for k in COORDS] == pytest.approx([0, 4 / 3, 10, 8])
    strict = vd.fuse_boxes(boxes, 10, 10, iou_threshold=0.35)
    assert sorted((b["readers"], b["y_min"], b["y_max"]) for b in strict) == [(1, 4, 10), (2, 0, 7)]


# ----------------------------------------------------------------------- intensity


def test_equalize_histogram_hand_worked():
    # bins 4 over [0, 3]: levels 0,0,1,3; counts [2,1,0,1]; cdf [2,3,3,4]; cdf_min 2, N 4
    # -> (cdf - 2) / 2 = [0, .5, .5, 1]
    img = np.array([[0, 0], [1, 3]], np.uint16)
    out = intensity.equalize_histogram(img, bins=4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0], [0.5, 1]])
    assert not intensity.equalize_histogram(np.full((3, 3), 7.0)).any()
    # monotone and spanning [0, 1] on a skewed image
    ramp = np.arange(100, dtype=float).reshape(10, 10) ** 3
    eq = intensity.equalize_histogram(ramp, bins=256)
    assert eq.min() == 0 and eq.max() == 1 and (np.diff(eq.ravel()) >= 0).all()
    assert abs(np.median(eq) - 0.5) < 0.1  # flattened: the cubic ramp's median was at 0.125


def test_resize_with_boxes_keeps_bright_rectangle_aligned():
    img = np.zeros((200, 300), np.float32)  # H 200, W 300: axes must not be swapped
    img[40:80, 150:240] = 1.0  # box (x 150..240, y 40..80)
    out, boxes = intensity.resize_with_boxes(img, [[150, 40, 240, 80]], 100)
    assert out.shape == (100, 100)
    np.testing.assert_allclose(boxes, [[50, 20, 80, 40]])
    rows, cols = np.nonzero(out > 0.5)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (50, 20, 80, 40)
    np.testing.assert_allclose(
        intensity.scale_boxes([[0, 0, 300, 200]], (200, 300), (50, 60)), [[0, 0, 60, 50]]
    )
    # shrinking low-passes (a 1-pixel checkerboard becomes flat grey), never point-samples
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    small = intensity.resize(checker, 16)
    assert small.shape == (16, 16) and abs(small.mean() - 0.5) < 0.05 and small.std() < 0.05


# ---------------------------------------------------------------------- round trip


def test_synth_layout_and_counts(kaggle):
    root, counts = kaggle["root"], kaggle["counts"]
    header = (root / "train.csv").read_text().splitlines()[0]
    assert header == "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
    csv = pd.read_csv(root / "train.csv", dtype={"rad_id": str})
    assert len(list((root / "train").glob("*.dicom"))) == counts["images"] == CASES
    assert len(list((root / "test").glob("*.dicom"))) == counts["test_images"] == 2
    assert (root / "sample_submission.csv").is_file()
    assert csv.groupby("image_id").rad_id.nunique().eq(3).all()  # three radiologists each
    assert csv.rad_id.str.fullmatch(r"R([1-9]|1[0-7])").all()
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in csv.image_id)
    nf = csv[csv.class_name == "No finding"]
    assert nf.class_id.eq(14).all() and nf[COORDS].isna().all().all()
    assert (csv.class_name.map(vd.CLASS_IDS) == csv.class_id).all()
    assert counts["abnormal"] >= 2 and counts["normal"] >= 1 and counts["rows"] == len(csv)
    # encodings vary: MONOCHROME1, RLE and JPEG-LS, several bit depths
    headers = [
        pydicom.dcmread(p, stop_before_pixels=True) for p in (root / "train").glob("*.dicom")
    ]
    assert {str(h.PhotometricInterpretation) for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert {h.file_meta.TransferSyntaxUID for h in headers} >= {
        pydicom.uid.RLELossless,
        pydicom.uid.JPEGLSLossless,
    }
    assert {int(h.BitsStored) for h in headers} == {12, 14, 16}
    assert len({(h.Rows, h.Columns) for h in headers}) > 3
    assert len({str(h.PatientID) for h in headers}) < CASES  # some patients have several images


def test_round_trip_labels_boxes_counts(kaggle):
    result, df, root = kaggle["result"], kaggle["df"], kaggle["root"]
    # the unlabelled Kaggle test images are not samples
    assert (result["found"], result["ingested"], result["failed"]) == (CASES, CASES, 0)
    assert kaggle["meta"]["format"] == "vindr_cxr"
    expected = _expected(root / "train.csv")
    assert set(df.sample_id) == set(expected)
    for _, row in df.iterrows():
        exp = expected[row.sample_id]
        assert row.labels == exp["labels"]
        got = sorted(
            (vd.CLASS_IDS[b["label"]], b["label"], *(b[k] for k in COORDS), b["readers"])
            for b in row.boxes
        )
        assert len(got) == len(exp["boxes"])
        for g, e in zip(got, exp["boxes"], strict=True):
            assert g[:2] == e[:2] and g[-1] == e[-1]
            np.testing.assert_allclose(g[2:6], e[2:6], atol=1e-3)
        extra = json.loads(row.extra)
        assert extra["raw_boxes"] == exp["raw"] == sum(b["readers"] for b in row.boxes)
        assert extra["raw_boxes_per_radiologist"] == exp["per_rad"]
        assert extra["layout"] == "kaggle"
        ds = pydicom.dcmread(root / row.path, stop_before_pixels=True)
        assert row.path == f"train/{row.sample_id}.dicom"
        assert (row.height, row.width, row.depth) == (ds.Rows, ds.Columns, 1)
        assert row.source_split == "train" and row.modality == "DX" and row["mask"] is None
        assert extra["photometric"] == ds.PhotometricInterpretation
    assert any(b["readers"] < 3 for bs in df.boxes for b in bs)  # partial agreement occurs
    assert kaggle["counts"]["boxes"] == sum(json.loads(e)["raw_boxes"] for e in df.extra)


def test_patient_keys_group_images_of_one_patient(kaggle):
    df, root = kaggle["df"], kaggle["root"]
    pid = {
        r.sample_id: str(pydicom.dcmread(root / r.path, stop_before_pixels=True).PatientID)
        for r in df.itertuples()
    }
    assert df.patient_key.str.fullmatch(r"p_[0-9a-f]{16}").all()
    key_of = dict(zip(df.sample_id, df.patient_key, strict=True))
    for a in pid:
        for b in pid:
            assert (pid[a] == pid[b]) == (key_of[a] == key_of[b])
    assert df.groupby("patient_key").split.nunique().eq(1).all()
    assert (json.loads(df.extra[0])["patient_from"]) == "dicom"


def test_abnormal_filter_and_option(kaggle):
    df, root, counts = kaggle["df"], kaggle["root"], kaggle["counts"]
    mask = vd.abnormal(df)
    assert mask.dtype == bool and list(mask.index) == list(df.index)
    assert list(mask) == [len(x) > 0 for x in df.labels]
    assert int(mask.sum()) == counts["abnormal"]
    csv = pd.read_csv(root / "train.csv")
    abnormal_ids = set(csv[csv.class_name != "No finding"].image_id)
    assert set(df.sample_id[mask]) == abnormal_ids
    ledger = Ledger()
    vd.ingest(root, ledger, workers=1, abnormal_only=True)
    assert {r["sample_id"] for r in ledger.rows} == abnormal_ids
    assert ledger.found == len(abnormal_ids) and not ledger.errors


def test_preprocess_puts_bright_findings_inside_scaled_boxes(kaggle):
    df, root = kaggle["df"], kaggle["root"]
    prep = vd.Preprocessing()
    assert (
        prep.size == 512
        and prep.key() == vd.Preprocessing().key() != vd.Preprocessing(size=256).key()
    )
    rows = df[vd.abnormal(df)]
    photometrics = set()
    for _, row in rows.iterrows():
        img = vd.preprocess(root, row, prep)
        assert img.shape == (512, 512) and img.dtype == np.float32
        assert img.min() >= 0 and img.max() <= 1
        boxes, labels = vd.scaled_boxes(row, 512)
        assert (
            boxes.shape == (len(row.boxes), 4)
            and boxes.dtype == np.float32
            and labels.dtype == np.int64
        )
        assert list(labels) == [vd.CLASS_IDS[b["label"]] for b in row.boxes]
        inside = np.zeros(img.shape, bool)
        for x0, y0, x1, y1 in boxes:
            # fused boxes are within a few pixels of the drawn rectangle: test its core
            core = img[int(y0) + 6 : int(y1) - 6, int(x0) + 6 : int(x1) - 6]
            assert core.size and core.mean() > 0.8
            inside[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
        assert img[inside].mean() > img[~inside].mean() + 0.25
        photometrics.add(json.loads(row.extra)["photometric"])
    assert "MONOCHROME1" in photometrics  # inverted correctly: findings still bright


def test_preprocess_exact_geometry_on_a_hand_made_dicom(tmp_path):
    root = tmp_path / "root"
    pixels = np.full((200, 300), 200, np.uint16)
    pixels[40:80, 150:240] = 4000
    image_id = "0123456789abcdef0123456789abcdef"
    write_dicom(
        root / "train" / f"{image_id}.dicom",
        pixels,
        Identity("HANDMADE01"),
        photometric="MONOCHROME2",
    )
    rows = [f"{image_id},Cardiomegaly,3,R{r},150,40,240,80" for r in (1, 2, 3)]
    (root / "train.csv").write_text(
        "\n".join(["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max", *rows]) + "\n"
    )
    out = tmp_path / "m.parquet"
    assert run_ingest("vindr_cxr", root, out, workers=1)["ingested"] == 1
    df, _ = manifest.read(out)
    row = df.iloc[0]
    assert (row.height, row.width) == (200, 300)
    assert row.boxes == [
        {
            "label": "Cardiomegaly",
            "x_min": 150.0,
            "y_min": 40.0,
            "x_max": 240.0,
            "y_max": 80.0,
            "readers": 3,
        }
    ]
    boxes, labels = vd.scaled_boxes(row, 100)
    np.testing.assert_allclose(boxes, [[50, 20, 80, 40]])
    assert list(labels) == [3]
    linear = vd.preprocess(root, row, vd.Preprocessing(size=100, equalize=False))
    r, c = np.nonzero(linear > 0.5)
    assert (c.min(), r.min(), c.max() + 1, r.max() + 1) == (50, 20, 80, 40)
    # equalisation moves the half-lit edge pixels, never more than one pixel
    r, c = np.nonzero(vd.preprocess(root, row, vd.Preprocessing(size=100)) > 0.5)
    np.testing.assert_allclose(
        [c.min(), r.min(), c.max() + 1, r.max() + 1], [50, 20, 80, 40], atol=1
    )


def test_workers_give_the_same_manifest(kaggle, tmp_path):
    result = run_ingest("vindr_cxr", kaggle["root"], tmp_path / "w2.parquet", workers=2)
    assert result["hash"] == kaggle["result"]["hash"]


def test_synth_is_deterministic(tmp_path):
    a = synth_vindr_cxr(tmp_path / "a", cases=3, seed=5)
    b = synth_vindr_cxr(tmp_path / "b", cases=3, seed=5)
    assert a == b
    assert (tmp_path / "a" / "train.csv").read_bytes() == (
        tmp_path / "b" / "train.csv"
    ).read_bytes()
    names = sorted(p.name for p in (tmp_path / "a" / "train").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "train").iterdir())
    for name in names:
        pa_, pb_ = (pydicom.dcmread(tmp_path / d / "train" / name).pixel_array for d in "ab")
        np.testing.assert_array_equal(pa_, pb_)
    synth_vindr_cxr(tmp_path / "c", cases=3, seed=6)
    assert (tmp_path / "a" / "train.csv").read_bytes() != (
        tmp_path / "c" / "train.csv"
    ).read_bytes()


def test_physionet_variant_with_test_split_and_dcm(tmp_path):
    root = tmp_path / "physionet"
    counts = synth_vindr_cxr(root, cases=4, seed=2, layout="physionet", test_cases=3)
    assert (root / "annotations" / "annotations_train.csv").read_text().splitlines()[0] == (
        "image_id,rad_id,x_min,y_min,x_max,y_max,class_name"
    )
    assert (root / "annotations" / "annotations_test.csv").read_text().splitlines()[0] == (
        "image_id,x_min,y_min,x_max,y_max,class_name"
    )
    first = sorted((root / "train").glob("*.dicom"))[0]
    first.rename(first.with_suffix(".dcm"))
    out = tmp_path / "m.parquet"
    result = run_ingest("vindr_cxr", root, out, workers=1)
    assert (result["found"], result["ingested"]) == (counts["images"] + counts["test_images"], 7)
    df, _ = manifest.read(out)
    assert df.source_split.value_counts().to_dict() == {"train": 4, "test": 3}
    assert df.set_index("sample_id").path[first.stem] == f"train/{first.stem}.dcm"
    test_csv = pd.read_csv(root / "annotations" / "annotations_test.csv")
    for _, row in df[df.source_split == "test"].iterrows():
        g = test_csv[(test_csv.image_id == row.sample_id) & (test_csv.class_name != "No finding")]
        assert len(row.boxes) == len(g) and all(b["readers"] == 1 for b in row.boxes)
        assert row.path.startswith("test/") and json.loads(row.extra)["layout"] == "physionet"
    train_expected = _expected(root / "annotations" / "annotations_train.csv")
    for _, row in df[df.source_split == "train"].iterrows():
        assert row.labels == train_expected[row.sample_id]["labels"]


# ------------------------------------------------------------------------ failures


def _identity_strings(train: Path) -> set[str]:
    out = set()
    for path in train.glob("*.dicom"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for key in (
            "PatientID",
            "PatientName",
            "PatientBirthDate",
            "AccessionNumber",
            "InstitutionName",
            "ReferringPhysicianName",
        ):
            value = str(ds.get(key, "") or "")
            out |= {value, *value.split("^")}
    return {s for s in out if len(s) >= 4}


def test_corrupted_inputs_become_error_rows(tmp_path):
    root = tmp_path / "root"
    synth_vindr_cxr(root, cases=10, seed=1)
    secrets_ = _identity_strings(root / "train")
    train = root / "train"
    csv_path = root / "train.csv"
    csv = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    ids = sorted(set(csv.image_id))
    ts = {
        i: pydicom.dcmread(
            train / f"{i}.dicom", stop_before_pixels=True
        ).file_meta.TransferSyntaxUID
        for i in ids
    }
    plain = [i for i in ids if ts[i] == pydicom.uid.ExplicitVRLittleEndian]
    size = {i: pydicom.dcmread(train / f"{i}.dicom", stop_before_pixels=True) for i in ids}
    expect: dict[str, str] = {}

    victim = plain[0]  # truncated pixel data
    blob = (train / f"{victim}.dicom").read_bytes()
    (train / f"{victim}.dicom").write_bytes(blob[: len(blob) * 2 // 3])
    expect[victim] = "truncated"
    victim = [i for i in ids if i not in expect][0]  # image the CSV names is gone
    (train / f"{victim}.dicom").unlink()
    expect[victim] = "missing_file"
    victim = [i for i in ids if i not in expect][0]  # no pixel data
    ds = pydicom.dcmread(train / f"{victim}.dicom")
    del ds.PixelData
    ds.save_as(train / f"{victim}.dicom")
    expect[victim] = "no_pixel_data"
    victim = [i for i in plain if i not in expect][0]  # transfer syntax nobody decodes
    ds = pydicom.dcmread(train / f"{victim}.dicom")
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    ds.save_as(train / f"{victim}.dicom", enforce_file_format=False)
    expect[victim] = "undecodable_transfer_syntax"
    free = [i for i in ids if i not in expect]
    extra_rows = []
    # a box past the right edge: the whole image fails, though its other boxes are fine
    outside = next(i for i in free if (csv[csv.image_id == i].class_name != "No finding").any())
    w = int(size[outside].Columns)
    extra_rows.append([outside, "Cardiomegaly", "3", "R4", "10", "10", str(w + 5), "40"])
    expect[outside] = "box_outside_image"
    empty = [i for i in free if i != outside][0]  # x_min == x_max
    extra_rows.append([empty, "ILD", "5", "R4", "50", "10", "50", "40"])
    expect[empty] = "box_outside_image"
    wrong = [i for i in free if i not in expect][0]  # class_id does not match class_name
    extra_rows.append([wrong, "Pneumothorax", "3", "R4", "10", "10", "20", "20"])
    expect[wrong] = "bad_csv_row"
    noncoord = [i for i in free if i not in expect][0]  # finding without coordinates
    extra_rows.append([noncoord, "Atelectasis", "1", "R4", "", "", "", ""])
    expect[noncoord] = "bad_csv_row"
    ghost = "f" * 32  # CSV row, no file
    extra_rows.append([ghost, "No finding", "14", "R1", "", "", "", ""])
    expect[ghost] = "missing_file"
    stray = "e" * 32  # file, no CSV row
    shutil.copy(train / f"{free[-1]}.dicom", train / f"{stray}.dicom")
    expect[stray] = "no_annotation"
    junk = "d" * 32  # not a DICOM at all
    (train / f"{junk}.dicom").write_text("this is not a DICOM file\n")
    extra_rows.append([junk, "No finding", "14", "R1", "", "", "", ""])
    expect[junk] = "not_dicom"
    bad = pd.concat([csv, pd.DataFrame(extra_rows, columns=csv.columns)], ignore_index=True)
    bad.to_csv(csv_path, index=False)

    out = tmp_path / "m.parquet"
    result = run_ingest("vindr_cxr", root, out, workers=2)
    found = len(ids) + 3  # ghost, stray, junk
    assert result["found"] == found == result["ingested"] + result["failed"]
    assert result["failed"] == len(expect)
    errors = pd.read_parquet(errors_path(out))
    assert dict(zip(errors.sample_id, errors.reason, strict=True)) == expect
    assert errors.detail.str.len().gt(0).all()
    df, _ = manifest.read(out)
    assert set(df.sample_id) == set(ids) - set(expect)  # failed samples never half-ingested
    assert {k for k, v in result["failed_by_reason"].items() if v} == set(expect.values())

    # no made-up identity anywhere in what ingest wrote
    assert secrets_ and any(s.startswith("VNSYN") for s in secrets_)
    blobs = [
        out.read_bytes(),
        errors_path(out).read_bytes(),
        df.to_json().encode(),
        errors.to_json().encode(),
    ]
    for secret in secrets_:
        for blob in blobs:
            assert secret.encode() not in blob, secret


def test_identity_never_reaches_the_manifest(kaggle):
    secrets_ = _identity_strings(kaggle["root"] / "train")
    assert len(secrets_) > 10
    out = kaggle["out"]
    blobs = [out.read_bytes(), errors_path(out).read_bytes(), kaggle["df"].to_json().encode()]
    for secret in secrets_:
        assert all(secret.encode() not in b for b in blobs), secret


def test_missing_column_is_a_layout_error(tmp_path):
    root = tmp_path / "k"
    synth_vindr_cxr(root, cases=2, seed=3)
    csv = pd.read_csv(root / "train.csv", dtype=str)
    csv.drop(columns=["class_id"]).to_csv(root / "train.csv", index=False)
    with pytest.raises(LayoutError, match="class_id"):
        run_ingest("vindr_cxr", root, tmp_path / "m.parquet")
    phys = tmp_path / "p"
    synth_vindr_cxr(phys, cases=2, seed=3, layout="physionet")
    path = phys / "annotations" / "annotations_train.csv"
    pd.read_csv(path, dtype=str).drop(columns=["x_max"]).to_csv(path, index=False)
    with pytest.raises(LayoutError, match="x_max"):
        run_ingest("vindr_cxr", phys, tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_root_that_is_not_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("nothing here")
    with pytest.raises(LayoutError, match="train.csv"):
        run_ingest("vindr_cxr", tmp_path / "empty", tmp_path / "m.parquet")
    only_csv = tmp_path / "only_csv"
    only_csv.mkdir()
    (only_csv / "train.csv").write_text(",".join(vd.KAGGLE_COLUMNS) + "\n")
    with pytest.raises(LayoutError, match=r"only_csv/train: image folder missing \(train\.csv names its DICOMs there\)") as err:
        run_ingest("vindr_cxr", only_csv, tmp_path / "m.parquet")
    assert err.value.path == str(only_csv / "train")
    root = tmp_path / "phys"
    synth_vindr_cxr(root, cases=1, seed=4, layout="physionet")
    (root / "annotations" / "annotations_test.csv").write_text(",".join(vd.TEST_COLUMNS) + "\n")
    with pytest.raises(LayoutError, match=r"phys/test: image folder missing \(annotations_test\.csv names its DICOMs there\)") as err:
        run_ingest("vindr_cxr", root, tmp_path / "m.parquet")
    assert err.value.path == str(root / "test")
