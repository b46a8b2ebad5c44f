"""MURA v1.1: synth -> ingest round trip, broken inputs, layout errors, privacy, preprocessing."""

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from raysuite.data import manifest, privacy
from raysuite.data.datasets import errors_path, run_ingest
from raysuite.data.formats import mura
from raysuite.data.ingest import LayoutError
from raysuite.data.synth.mura import synth as synth_mura


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mura")
    counts = synth_mura(root, cases=8, seed=0)
    return root, counts


@pytest.fixture(scope="module")
def mura_manifest(mura_root, tmp_path_factory):
    root, _ = mura_root
    out = tmp_path_factory.mktemp("mura-manifest") / "m.parquet"
    result = run_ingest("mura", root, out, workers=2)
    df, _ = manifest.read(out)
    return result, df.set_index("sample_id", drop=False), out


def _expected(root):
    """The CSVs read independently: image path (as in the CSV) -> (split, study label)."""
    base = root / "MURA-v1.1"
    out = {}
    for split in ("train", "valid"):
        with open(base / f"{split}_labeled_studies.csv", newline="") as f:
            labels = {r[0]: int(r[1]) for r in csv.reader(f)}
        assert all(s.startswith(f"MURA-v1.1/{split}/XR_") and s.endswith("/") for s in labels)
        with open(base / f"{split}_image_paths.csv", newline="") as f:
            for (path,) in csv.reader(f):
                out[path] = (split, labels[path.rsplit("/", 1)[0] + "/"])
    return out


def test_round_trip(mura_root, mura_manifest):
    root, counts = mura_root
    result, df, out = mura_manifest
    expected = _expected(root)
    assert (
        result["found"] == result["ingested"] == counts["images"] == len(expected)
        and result["failed"] == 0
    )
    assert set(df.path) == set(expected)
    for path, (split, label) in expected.items():
        row = df.loc[path.removeprefix("MURA-v1.1/").removesuffix(".png")]
        _, _, part, patient, study, _ = path.split("/")
        assert list(row.labels) == (["abnormal"] if label else []) and mura.target(row) == float(
            label
        )
        assert row.source_split == split
        assert json.loads(row.extra) == {"body_part": part, "study": study}
        assert row.patient_key == privacy.salted_key(patient)
        with Image.open(root / path) as img:
            assert (row.height, row.width) == (img.height, img.width)
    # the synthetic set has what makes MURA MURA: several studies per patient, several body
    # parts, images smaller than 224, a few RGB PNGs, both labels, both splits
    studies = df.groupby("patient_key").study.nunique()
    assert studies.max() > 1 and df.study.nunique() == counts["studies"]
    assert len({json.loads(e)["body_part"] for e in df.extra}) >= 3
    assert (df[["height", "width"]].min(axis=1) < 224).any() and (
        df[["height", "width"]].max(axis=1) > 224
    ).any()
    assert any(Image.open(root / p).mode == "RGB" for p in df.path)
    assert set(df.labels.map(len)) == {0, 1} and set(df.source_split) == {"train", "valid"}
    assert (df.groupby("patient_key").split.nunique() == 1).all()


def test_root_may_be_the_mura_folder(mura_root, mura_manifest, tmp_path):
    root, _ = mura_root
    _, df, _ = mura_manifest
    result = run_ingest("mura", root / "MURA-v1.1", tmp_path / "m.parquet", workers=1)
    inner, meta = manifest.read(tmp_path / "m.parquet")
    assert result["failed"] == 0 and meta["root"].endswith("MURA-v1.1")
    inner = inner.set_index("sample_id")
    assert list(inner.index) == sorted(df.index)
    assert all(df.loc[s].path == "MURA-v1.1/" + inner.loc[s].path for s in inner.index)
    assert not any(p.startswith("MURA-v1.1/") for p in inner.path)
    assert all((root / "MURA-v1.1" / p).is_file() for p in inner.path)
    assert inner.labels.map(tuple).to_dict() == df.labels.map(tuple).to_dict()


def test_privacy(mura_root, mura_manifest):
    root, _ = mura_root
    _, df, out = mura_manifest
    patients = {p.split("/")[3] for p in _expected(root)}
    others = df.drop(columns=["sample_id", "path"]).astype(str).to_csv(index=False)
    for patient in patients:
        assert patient not in others
    assert all(k.startswith("p_") for k in df.patient_key) and all(
        s.startswith("s_") for s in df.study
    )


def test_broken_inputs_become_error_rows(mura_root, tmp_path):
    src, counts = mura_root
    root = tmp_path / "r"
    shutil.copytree(src, root)
    base = root / "MURA-v1.1"
    train = [line.strip() for line in (base / "train_image_paths.csv").read_text().splitlines()]
    studies = sorted({p.rsplit("/", 1)[0] + "/" for p in train})
    by_study = {s: [p for p in train if p.startswith(s)] for s in studies}
    unlabelled, bad_label = studies[0], studies[1]
    singles = [p for s in studies[2:] for p in by_study[s]]
    truncated, deleted, duplicated = singles[0], singles[1], singles[2]

    blob = (root / truncated).read_bytes()
    (root / truncated).write_bytes(blob[: len(blob) // 2])
    (root / deleted).unlink()
    stray = base / "train/XR_HAND/patient09999/study1_negative/image1.png"
    stray.parent.mkdir(parents=True)
    shutil.copy(root / singles[3], stray)
    (base / "train_image_paths.csv").write_text(
        "".join(f"{p}\n" for p in train)
        + f"{duplicated}\nMURA-v1.1/train/XR_KNEE/patient00001/study1_negative/image1.png\n"
    )
    labelled = (base / "train_labeled_studies.csv").read_text().splitlines()
    fixed = [
        line.replace(",1", ",2").replace(",0", ",2") if line.startswith(bad_label) else line
        for line in labelled
    ]
    (base / "train_labeled_studies.csv").write_text(
        "".join(f"{x}\n" for x in fixed if not x.startswith(unlabelled))
    )

    out = tmp_path / "m.parquet"
    result = run_ingest("mura", root, out, workers=2)
    assert result["found"] == counts["images"] + 3 == result["ingested"] + result["failed"]
    errors = pd.read_parquet(errors_path(out))
    sid = lambda p: p.removeprefix("MURA-v1.1/").removesuffix(".png")  # noqa: E731
    want = {sid(p): "no_annotation" for p in by_study[unlabelled]}
    want |= {sid(p): "bad_csv_row" for p in by_study[bad_label]}
    want |= {
        sid(truncated): "truncated",
        sid(deleted): "missing_file",
        "train/XR_HAND/patient09999/study1_negative/image1": "no_annotation",
        "train/XR_KNEE/patient00001/study1_negative/image1": "bad_csv_row",
    }
    got = errors.set_index("sample_id").reason.to_dict()
    dup = [s for s in got if s.startswith(sid(duplicated) + "#")]
    assert len(dup) == 1 and got.pop(dup[0]) == "bad_csv_row"
    assert got == want
    df, _ = manifest.read(out)
    assert sid(duplicated) in set(df.sample_id) and not set(df.sample_id) & set(want)
    assert (
        len(df)
        == result["ingested"]
        == counts["images"] - len(by_study[unlabelled]) - len(by_study[bad_label]) - 2
    )
    assert all(not f.startswith("/") for f in errors.file)


def test_layout_errors(mura_root, tmp_path):
    src, _ = mura_root
    with pytest.raises(LayoutError, match="MURA-v1.1"):
        run_ingest("mura", tmp_path, tmp_path / "m.parquet")
    root = tmp_path / "r"
    shutil.copytree(src, root)
    base = root / "MURA-v1.1"
    (base / "valid_labeled_studies.csv").unlink()
    with pytest.raises(LayoutError, match="valid_labeled_studies.csv"):
        run_ingest("mura", root, tmp_path / "m.parquet")
    shutil.copy(src / "MURA-v1.1" / "valid_labeled_studies.csv", base / "valid_labeled_studies.csv")
    studies = (base / "train_labeled_studies.csv").read_text().splitlines()
    (base / "train_labeled_studies.csv").write_text(
        "".join(s.split(",")[0] + "\n" for s in studies)
    )
    with pytest.raises(LayoutError, match="label"):
        run_ingest("mura", root, tmp_path / "m.parquet")


def test_preprocess(mura_root, mura_manifest):
    root, _ = mura_root
    _, df, _ = mura_manifest
    prep = mura.Preprocessing()
    assert (prep.size, prep.crop, prep.scale) == (224, 448, 255.0)
    assert prep.key() != mura.Preprocessing(size=256).key()
    for _, row in df.iterrows():
        image = mura.preprocess(root, row, prep)
        assert image.shape == (224, 224) and image.dtype == np.float32
        assert 0 <= image.min() <= image.max() <= 1
        # abnormal studies show a bright implant plate; normal bone never gets that bright
        assert (image.max() > 0.9) == (mura.target(row) == 1.0), row.sample_id
    small = df[df.height < 224].iloc[0]
    loaded = mura.load(root, small, prep)
    stored = np.asarray(Image.open(root / small.path).convert("L"), np.float32) / 255
    h, w = stored.shape
    assert loaded.shape == (max(224, h), max(224, w))
    top, left = (224 - h) // 2, max(0, (224 - w) // 2)
    np.testing.assert_allclose(loaded[top : top + h, left : left + w], stored, atol=1e-6)
    assert loaded.sum() == pytest.approx(stored.sum(), rel=1e-5)  # the padding is zeros
    big = df[(df.height > 224) & (df.width > 224)].iloc[0]
    image = mura.load(root, big, prep)
    a = mura.random_crop(image, prep, np.random.default_rng(3))
    b = mura.random_crop(image, prep, np.random.default_rng(3))
    assert a.shape == (224, 224) and np.array_equal(a, b) and 0 <= a.min() <= a.max() <= 1
