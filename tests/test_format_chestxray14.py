"""ChestX-ray14: synth -> ingest round trip, broken inputs, layout errors, privacy, preprocessing."""

import csv
import shutil

import numpy as np
import pandas as pd
import pytest

from raysuite.data import manifest, privacy
from raysuite.data.datasets import errors_path, run_ingest
from raysuite.data.formats import chestxray14 as cx
from raysuite.data.ingest import LayoutError
from raysuite.data.synth.chestxray14 import synth as synth_chestxray14

SIZE = 64  # stored image size of the synthetic set (1024 in the published one)


@pytest.fixture(scope="module")
def cx_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chestxray14")
    counts = synth_chestxray14(root, cases=10, seed=0, size=SIZE)
    assert counts["annotated_images"] >= 3 and counts["images"] > counts["patients"]
    return root, counts


@pytest.fixture(scope="module")
def cx_manifest(cx_root, tmp_path_factory):
    root, counts = cx_root
    out = tmp_path_factory.mktemp("cx-manifest") / "m.parquet"
    result = run_ingest("chestxray14", root, out, workers=2)
    df, meta = manifest.read(out)
    return result, df.set_index("sample_id", drop=False), meta, out


def _entries(root):
    """Data_Entry_2017.csv read independently: image -> (labels, patient id)."""
    with open(root / "Data_Entry_2017.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["Image Index", "Finding Labels", "Follow-up #", "Patient ID"]
    assert rows[0][7:] == [
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
        "",
    ]
    out = {}
    for r in rows[1:]:
        labels = [] if r[1] == "No Finding" else r[1].split("|")
        out[r[0]] = (sorted(labels), int(r[3]))
    return out


def _bboxes(root):
    """BBox_List_2017.csv read independently: image -> sorted [(label, x0, y0, x1, y1)] in 1024 px."""
    with open(root / "BBox_List_2017.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""]
    out = {}
    for r in rows[1:]:
        x, y, w, h = map(float, r[2:6])
        label = "Infiltration" if r[1] == "Infiltrate" else r[1]
        out.setdefault(r[0], []).append((label, x, y, x + w, y + h))
    return {k: sorted(v) for k, v in out.items()}


def test_round_trip_labels_boxes_splits(cx_root, cx_manifest):
    root, counts = cx_root
    result, df, meta, _ = cx_manifest
    entries, boxes = _entries(root), _bboxes(root)
    assert (
        result["found"] == result["ingested"] == counts["images"] == len(entries)
        and result["failed"] == 0
    )
    assert meta["format"] == "chestxray14"
    assert (
        sum(len(v) for v in boxes.values()) == counts["boxes"]
        and len(boxes) == counts["annotated_images"]
    )
    for name, (labels, _) in entries.items():
        row = df.loc[name.removesuffix(".png")]
        assert sorted(row.labels) == labels
        assert (row.height, row.width, row.depth) == (SIZE, SIZE, 1)
        assert row.path.endswith(f"/images/{name}") and row.path.startswith("images_00")
        got = sorted(
            (b["label"], b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in row.boxes
        )
        want = [(lab, *(v * SIZE / 1024 for v in xyxy)) for lab, *xyxy in boxes.get(name, [])]
        assert [g[0] for g in got] == [w[0] for w in want]
        if want:
            np.testing.assert_allclose([g[1:] for g in got], [w[1:] for w in want], atol=1e-3)
        assert all(b["readers"] == 1 for b in row.boxes)
    assert {p.split("/")[0] for p in df.path} == {"images_001", "images_002"}
    test_names = set((root / "test_list.txt").read_text().split())
    assert (
        test_names and {n for n in entries if df.loc[n[:-4]].source_split == "test"} == test_names
    )
    assert set(df.source_split) == {"train", "test"}
    # a few published PNGs are RGBA; synth writes one and it ingests like the others
    from PIL import Image

    modes = {p.name: Image.open(p).mode for p in root.glob("images_*/images/*.png")}
    assert sorted(modes.values()).count("RGBA") == 1
    rgba = next(n for n, m in modes.items() if m == "RGBA")
    assert df.loc[rgba[:-4], "height"] == SIZE
    # spacing (row, column) of the stored PNG from the original size and spacing
    with open(root / "Data_Entry_2017.csv", newline="") as f:
        first = list(csv.reader(f))[1]
    w, h, sx, sy = map(float, first[7:11])
    np.testing.assert_allclose(
        df.loc[first[0][:-4]].spacing, [sy * h / SIZE, sx * w / SIZE], rtol=1e-5
    )


def test_patients_are_salted_and_split_whole(cx_root, cx_manifest):
    root, _ = cx_root
    _, df, _, out = cx_manifest
    entries = _entries(root)
    for name, (_, patient) in entries.items():
        assert df.loc[name[:-4]].patient_key == privacy.salted_key(f"{patient:08d}")
    per_patient = df.groupby("patient_key").size()
    assert per_patient.max() > 1 and len(per_patient) == len({p for _, p in entries.values()})
    assert (df.groupby("patient_key").split.nunique() == 1).all()
    # nothing but the published file name carries the patient number; no age or sex kept
    others = df.drop(columns=["sample_id", "path"]).astype(str).to_csv(index=False)
    for _, patient in entries.values():
        assert f"{patient:08d}" not in others
    import json

    assert {k for e in df.extra for k in json.loads(e)} <= {
        "follow_up",
        "view_position",
        "original_size",
    }
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    text = str(table.to_pylist()) + str(table.schema.metadata)
    assert "Patient" not in text and "Gender" not in text and "Age" not in text


def test_flat_images_folder(tmp_path):
    synth_chestxray14(tmp_path, cases=3, seed=1, size=32, split_folders=False)
    result = run_ingest("chestxray14", tmp_path, tmp_path / "m.parquet", workers=1)
    df, _ = manifest.read(tmp_path / "m.parquet")
    assert result["failed"] == 0 and result["found"] == len(df) > 3
    assert all(p.startswith("images/") for p in df.path)


def _rewrite(path, fn):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def test_broken_inputs_become_error_rows(cx_root, tmp_path):
    src, counts = cx_root
    root = tmp_path / "cx"
    shutil.copytree(src, root)
    entries, boxes = _entries(root), _bboxes(root)
    files = {p.name: p for p in root.glob("images_*/images/*.png")}
    annotated = sorted(boxes)
    plain = sorted(n for n in entries if n not in boxes)
    outside, bad_box, extra_box = annotated[0], annotated[1], annotated[2]
    truncated, deleted, bad_label, wide_row = plain[0], plain[1], plain[2], plain[3]

    blob = files[truncated].read_bytes()
    files[truncated].write_bytes(blob[: len(blob) // 2])
    files[deleted].unlink()
    shutil.copy(files[plain[4]], files[plain[4]].parent / "99999999_000.png")  # no CSV row

    def entry_fix(lines):
        out = []
        for line in lines:
            if line.startswith(bad_label):
                fields = line.split(",")
                fields[1] = "Flu"
                line = ",".join(fields)
            if line.startswith(wide_row):
                line += ",surplus,fields"
            out.append(line)
        return out

    _rewrite(root / "Data_Entry_2017.csv", entry_fix)

    def box_fix(lines):
        out = []
        for line in lines:
            fields = line.split(",")
            if fields[0] == outside:
                fields[2:4] = ["950.0", "10.0"]  # x + w > 1024
            if fields[0] == bad_box:
                fields[4] = "wide"
            out.append(",".join(fields))
        # a second, malformed box for an image whose first box is fine: the image fails whole
        out.append(f"{extra_box},Mass,10,10,-5,20")
        return out

    _rewrite(root / "BBox_List_2017.csv", box_fix)
    out = tmp_path / "m.parquet"
    result = run_ingest("chestxray14", root, out, workers=2)
    assert result["found"] == counts["images"] + 1 == result["ingested"] + result["failed"]
    errors = pd.read_parquet(errors_path(out))
    assert errors.reason.groupby(errors.sample_id).first().to_dict() == {
        outside[:-4]: "box_outside_image",
        bad_box[:-4]: "bad_csv_row",
        extra_box[:-4]: "bad_csv_row",
        truncated[:-4]: "truncated",
        deleted[:-4]: "missing_file",
        bad_label[:-4]: "bad_csv_row",
        wide_row[:-4]: "bad_csv_row",
        "99999999_000": "no_annotation",
    }
    assert len(errors) == result["failed"] == 8
    df, _ = manifest.read(out)
    assert not set(df.sample_id) & set(errors.sample_id)
    assert all(not f.startswith("/") for f in errors.file)


def test_layout_errors(cx_root, tmp_path):
    src, _ = cx_root
    with pytest.raises(LayoutError, match="Data_Entry_2017.csv"):
        run_ingest("chestxray14", tmp_path, tmp_path / "m.parquet")
    root = tmp_path / "cx"
    shutil.copytree(src, root)
    _rewrite(
        root / "Data_Entry_2017.csv",
        lambda ls: [ls[0].replace("Finding Labels", "Findings")] + ls[1:],
    )
    with pytest.raises(LayoutError, match="Finding Labels"):
        run_ingest("chestxray14", root, tmp_path / "m.parquet")
    shutil.copy(src / "Data_Entry_2017.csv", root / "Data_Entry_2017.csv")
    _rewrite(
        root / "BBox_List_2017.csv",
        lambda ls: ["Image Index,Finding Label,x"] + [",".join(x.split(",")[:3]) for x in ls[1:]],
    )
    with pytest.raises(LayoutError, match="6 columns"):
        run_ingest("chestxray14", root, tmp_path / "m.parquet")
    shutil.copy(src / "BBox_List_2017.csv", root / "BBox_List_2017.csv")
    for folder in root.glob("images_*"):
        shutil.rmtree(folder)
    with pytest.raises(LayoutError, match="images"):
        run_ingest("chestxray14", root, tmp_path / "m.parquet")


def test_preprocess_boxes_and_targets(cx_root, cx_manifest):
    root, _ = cx_root
    _, df, _, _ = cx_manifest
    prep = cx.Preprocessing()
    assert (prep.size, prep.grid, prep.model_range) == (512, 20, (-1.0, 1.0))
    assert prep.key() != cx.Preprocessing(size=256).key()
    small = cx.Preprocessing(size=96, grid=8)
    normal = cx.preprocess(root, df[df.labels.map(len) == 0].iloc[0], small)
    assert (
        normal.shape == (96, 96)
        and normal.dtype == np.float32
        and 0 <= normal.min() <= normal.max() <= 1
    )
    scaled = cx.to_model_range(normal, small)
    np.testing.assert_allclose(scaled, normal * 2 - 1, atol=1e-6)
    annotated = df[df.boxes.map(len) > 0]
    for _, row in annotated.iterrows():
        image = cx.preprocess(root, row, small)
        xyxy, labels = cx.scaled_boxes(row, small.size)
        assert xyxy.shape == (len(row.boxes), 4) and xyxy.dtype == np.float32
        assert labels == [b["label"] for b in row.boxes]
        np.testing.assert_allclose(
            xyxy[0],
            [row.boxes[0][k] * 96 / SIZE for k in ("x_min", "y_min", "x_max", "y_max")],
            rtol=1e-5,
        )
        # the finding is drawn inside its box: the difference to a normal image is there
        x0, y0, x1, y1 = np.round(xyxy[0]).astype(int)
        inside = np.zeros_like(image, bool)
        inside[y0:y1, x0:x1] = True
        diff = np.abs(image - normal)
        assert diff[inside].mean() > 3 * diff[~inside].mean()
        t = cx.targets(row, small)
        assert t["labels"].shape == (14,) and t["patches"].shape == (14, 8, 8)
        assert {cx.CLASSES[i] for i in np.flatnonzero(t["labels"])} == set(row.labels)
        c = cx.CLASSES.index(labels[0])
        assert t["annotated"][c] == 1 and t["annotated"].sum() == len(set(labels))
        cx_, cy_ = (xyxy[0, 0] + xyxy[0, 2]) / 2 * 8 / 96, (xyxy[0, 1] + xyxy[0, 3]) / 2 * 8 / 96
        assert t["patches"][c, int(cy_), int(cx_)] == 1 and t["patches"][c].sum() < 64
    plain = cx.targets(df[df.labels.map(len) == 0].iloc[0], small)
    assert plain["labels"].sum() == plain["annotated"].sum() == plain["patches"].sum() == 0
