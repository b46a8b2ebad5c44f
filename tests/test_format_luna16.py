"""LUNA16 format: synthetic layout, ingest round trip, error rows, geometry and patches."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from raysuite.data import manifest
from raysuite.data.datasets import errors_path, run_ingest
from raysuite.data.formats import luna16
from raysuite.data.ingest import LayoutError
from raysuite.data.readers import ImageMeta, read_mhd, read_mhd_header
from raysuite.data.synth.luna16 import synth as synth_luna16

HEADER_KEYS = [
    "ObjectType", "NDims", "BinaryData", "BinaryDataByteOrderMSB", "CompressedData",
    "TransformMatrix", "Offset", "CenterOfRotation", "AnatomicalOrientation",
    "ElementSpacing", "DimSize", "ElementType", "ElementDataFile",
]  # fmt: skip


@pytest.fixture(scope="module")
def luna_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna16")
    counts = synth_luna16(root, cases=5, seed=0)
    return root, counts


@pytest.fixture(scope="module")
def ingested(luna_root, tmp_path_factory):
    root, _ = luna_root
    out = tmp_path_factory.mktemp("luna16-manifest") / "m.parquet"
    counts = run_ingest("luna16", root, out, workers=1)
    df, _ = manifest.read(out)
    return counts, df, out


def _uids(root):
    return sorted(p.stem for p in root.glob("subset*/*.mhd"))


def _centre_value(root, row, plane="axial"):
    patch = luna16.preprocess(root, row, luna16.Preprocessing(plane=plane))
    return float(patch[32, 32])


# ----------------------------------------------------------------------------- synth


def test_synth_writes_the_published_layout(luna_root):
    root, counts = luna_root
    assert counts["scans"] == 5 and counts["subsets"] == 5
    assert sorted(p.name for p in root.glob("subset*")) == [f"subset{i}" for i in range(5)]
    for mhd in root.glob("subset*/*.mhd"):
        assert mhd.stem.startswith(luna16.UID_ROOT) and len(mhd.stem) == len(luna16.UID_ROOT) + 30
        lines = mhd.read_text().splitlines()
        assert [line.split(" = ")[0] for line in lines] == HEADER_KEYS
        header = read_mhd_header(mhd)
        assert (
            header["ElementType"] == "MET_SHORT"
            and header["TransformMatrix"] == "1 0 0 0 1 0 0 0 1"
        )
        assert (
            header["AnatomicalOrientation"] == "RAI"
            and header["ElementDataFile"] == f"{mhd.stem}.raw"
        )
        origin = [float(v) for v in header["Offset"].split()]
        spacing = [float(v) for v in header["ElementSpacing"].split()]
        assert all(v < 0 for v in origin) and spacing[0] == spacing[1] != spacing[2]
        assert (mhd.with_suffix(".raw")).stat().st_size == 64 * 64 * 40 * 2
        volume, _ = read_mhd(mhd)
        assert volume.shape == (40, 64, 64)
        assert (
            volume.min() <= -1000 and np.median(volume) < -500 and volume.max() > 0
        )  # air, lung, body
    cands = pd.read_csv(root / "candidates_V2.csv")
    annots = pd.read_csv(root / "annotations.csv")
    assert list(cands.columns) == list(luna16.CANDIDATE_COLUMNS)
    assert list(annots.columns) == list(luna16.ANNOTATION_COLUMNS)
    assert (
        len(cands) == counts["candidates"] and int(cands["class"].sum()) == counts["positives"] > 0
    )
    assert len(annots) == counts["nodules"] > 0 and set(cands["class"]) == {0, 1}
    assert set(cands.seriesuid) == set(_uids(root))


def test_synth_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert synth_luna16(a, cases=2, seed=3) == synth_luna16(b, cases=2, seed=3)
    synth_luna16(c, cases=2, seed=4)
    assert (a / "candidates_V2.csv").read_bytes() == (b / "candidates_V2.csv").read_bytes()
    raws = sorted(p.relative_to(a) for p in a.rglob("*.raw"))
    assert raws == sorted(p.relative_to(b) for p in b.rglob("*.raw"))
    assert all((a / r).read_bytes() == (b / r).read_bytes() for r in raws)
    assert (a / "candidates_V2.csv").read_bytes() != (c / "candidates_V2.csv").read_bytes()


# ---------------------------------------------------------------------------- ingest


def test_round_trip(luna_root, ingested):
    root, synth_counts = luna_root
    counts, df, _ = ingested
    cands = pd.read_csv(root / "candidates_V2.csv")
    annots = pd.read_csv(root / "annotations.csv")
    assert counts["found"] == counts["ingested"] == len(cands) == synth_counts["candidates"]
    assert counts["failed"] == 0
    assert set(df.split) <= {"train", "val", "test"} and (df.modality == "CT").all()
    for _, row in df.iterrows():
        i = int(row.sample_id.removeprefix("c"))
        src = cands.iloc[i]
        extra = json.loads(row.extra)
        assert row.path == f"{row.source_split}/{src.seriesuid}.mhd" and (root / row.path).is_file()
        assert (
            list(row.labels) == (["nodule"] if src["class"] == 1 else [])
            and extra["class"] == src["class"]
        )
        assert (row.height, row.width, row.depth) == (64, 64, 40)
        header = read_mhd_header(root / row.path)
        origin = np.array(header["Offset"].split(), float)
        spacing = np.array(header["ElementSpacing"].split(), float)
        world = src[["coordX", "coordY", "coordZ"]].to_numpy(float)
        np.testing.assert_allclose(extra["world"], world)
        np.testing.assert_allclose(extra["voxel"], (world - origin) / spacing, atol=1e-9)
        np.testing.assert_allclose(row.spacing, spacing, rtol=1e-6)
        if src["class"] == 1:
            mine = annots[annots.seriesuid == src.seriesuid]
            assert np.isclose(mine.diameter_mm, extra["diameter_mm"]).any()
        else:
            assert "diameter_mm" not in extra
    # one scan per patient: one key per series, and one series per key
    assert df.groupby("path").patient_key.nunique().max() == 1
    assert df.groupby("patient_key").path.nunique().max() == 1


@pytest.mark.parametrize("plane", luna16.PLANES)
def test_patches_centre_on_the_candidate(luna_root, ingested, plane):
    root, _ = luna_root
    _, df, _ = ingested
    lo, hi = luna16.MIN_BOUND, luna16.MAX_BOUND
    bright, dark = (
        (-100 - lo) / (hi - lo),
        (-200 - lo) / (hi - lo),
    )  # nodules >= 0 HU, vessels <= -350
    for _, row in df.iterrows():
        patch = luna16.preprocess(root, row, luna16.Preprocessing(plane=plane))
        assert patch.shape == (64, 64) and patch.dtype == np.float32
        assert patch.min() >= 0 and patch.max() <= 1
        if row.labels:
            assert patch[32, 32] >= bright, row.sample_id
        else:
            assert patch[32, 32] <= dark, row.sample_id


def test_broken_inputs_become_error_rows(luna_root, tmp_path):
    src, _ = luna_root
    root = tmp_path / "luna"
    shutil.copytree(src, root)
    cands = pd.read_csv(root / "candidates_V2.csv", dtype=str)
    uids = _uids(root)
    truncated, deleted, nan, ok = uids[0], uids[1], uids[2], uids[3]
    raw = next(root.glob(f"subset*/{truncated}.raw"))
    raw.write_bytes(raw.read_bytes()[:1000])
    for p in root.glob(f"subset*/{deleted}.*"):
        p.unlink()
    mhd = next(root.glob(f"subset*/{nan}.mhd"))
    volume, _ = read_mhd(mhd)
    volume[3, 4, 5] = np.nan
    mhd.write_text(mhd.read_text().replace("ElementType = MET_SHORT", "ElementType = MET_FLOAT"))
    mhd.with_suffix(".raw").write_bytes(volume.astype("<f4").tobytes())
    origin = np.array(
        read_mhd_header(next(root.glob(f"subset*/{ok}.mhd")))["Offset"].split(), float
    )
    n = len(cands)
    extra_rows = pd.DataFrame(
        [
            [ok, "abc", "-150.0", "-200.0", "0"],  # non-numeric coordinate
            [ok, "-150.0", "-170.0", "-200.0", "2"],  # class outside 0/1
            [ok, *(str(v) for v in origin - 30.0), "1"],  # 30 mm before the first voxel
            ["", "-150.0", "-170.0", "-200.0", "0"],  # no series
        ],
        columns=list(luna16.CANDIDATE_COLUMNS),
    )
    pd.concat([cands, extra_rows]).to_csv(root / "candidates_V2.csv", index=False)

    out = tmp_path / "m.parquet"
    counts = run_ingest("luna16", root, out, workers=2)
    assert counts["found"] == n + 4 == counts["ingested"] + counts["failed"]
    errors = pd.read_parquet(errors_path(out)).set_index("sample_id")
    reasons = ["bad_csv_row", "bad_csv_row", "box_outside_image", "bad_csv_row"]
    expected = {f"c{n + k:07d}": reason for k, reason in enumerate(reasons)}
    for uid, reason in ((truncated, "truncated"), (deleted, "missing_file"), (nan, "nan_volume")):
        expected.update({f"c{i:07d}": reason for i in np.flatnonzero(cands.seriesuid == uid)})
    assert errors.reason.to_dict() == expected
    detail = errors.loc[f"c{n:07d}", "detail"]
    assert "coordX is not a finite number" in detail and "abc" not in detail  # names, never quotes
    assert counts["failed_by_reason"]["truncated"] == int((cands.seriesuid == truncated).sum())
    df, _ = manifest.read(out)
    assert len(df) == counts["ingested"] and not set(df.sample_id) & set(expected)
    kept = set(uids) - {truncated, deleted, nan}
    assert {p.split("/")[1].removesuffix(".mhd") for p in df.path} == kept


def test_identifiers_stay_out_of_keys(luna_root, ingested, tmp_path):
    root, _ = luna_root
    _, df, _ = ingested
    uids = _uids(root)
    for column in ("sample_id", "patient_key", "study"):
        values = " ".join(df[column])
        assert not any(uid in values for uid in uids)
        assert not any(part in values for uid in uids for part in [uid.rsplit(".", 1)[1]])
    assert (
        df.patient_key.str.match(r"^p_[0-9a-f]{16}$").all()
        and df.study.str.match(r"^s_[0-9a-f]{16}$").all()
    )
    # the error table too, where a scan is missing
    broken = tmp_path / "luna"
    shutil.copytree(root, broken)
    for p in broken.glob(f"subset*/{uids[0]}.*"):
        p.unlink()
    out = tmp_path / "m.parquet"
    run_ingest("luna16", broken, out, workers=1)
    errors = pd.read_parquet(errors_path(out))
    assert len(errors) and not any(uid in " ".join(errors.sample_id) for uid in uids)


def test_layout_errors(luna_root, tmp_path):
    src, _ = luna_root
    with pytest.raises(LayoutError, match="candidates_V2.csv"):
        run_ingest("luna16", tmp_path, tmp_path / "m.parquet")
    root = tmp_path / "luna"
    shutil.copytree(src, root)
    cands = pd.read_csv(root / "candidates_V2.csv")
    cands.drop(columns=["class"]).to_csv(root / "candidates_V2.csv", index=False)
    with pytest.raises(LayoutError, match=r"missing required column\(s\) \['class'\]"):
        run_ingest("luna16", root, tmp_path / "m.parquet")
    # the older candidates.csv is accepted; a root without subset*/ scans is not
    (root / "candidates_V2.csv").unlink()
    cands.to_csv(root / "candidates.csv", index=False)
    assert run_ingest("luna16", root, tmp_path / "m.parquet")["ingested"] == len(cands)
    for subset in root.glob("subset*"):
        shutil.rmtree(subset)
    with pytest.raises(LayoutError, match="subset"):
        run_ingest("luna16", root, tmp_path / "m.parquet")


# -------------------------------------------------------------- geometry, patches


def test_world_to_voxel_by_hand():
    # x flipped: world_x = -100 - 0.5 * i, world_y = 50 + 0.8 * j, world_z = -300 + 2.5 * k
    origin, spacing, flip = (-100.0, 50.0, -300.0), (0.5, 0.8, 2.5), (-1, 0, 0, 0, 1, 0, 0, 0, 1)
    np.testing.assert_allclose(
        luna16.world_to_voxel((-110.0, 58.0, -290.0), origin, spacing, flip), (20, 10, 4)
    )
    pts = np.array([[-110.0, 58.0, -290.0], [-100.0, 50.0, -300.0], [-100.25, 50.4, -298.75]])
    want = np.array([[20, 10, 4], [0, 0, 0], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(luna16.world_to_voxel(pts, origin, spacing, flip), want, atol=1e-12)
    meta = ImageMeta(spacing=spacing, origin=origin, direction=tuple(float(v) for v in flip))
    np.testing.assert_allclose(meta.world_to_voxel(pts), want, atol=1e-12)
    # identity (every LUNA16 scan): (world - origin) / spacing
    np.testing.assert_allclose(
        luna16.world_to_voxel((-95.0, 54.0, -280.0), origin, spacing), (10, 5, 8)
    )
    # MetaImage rows are axis directions (ITK): voxel x runs along world +y, voxel y along
    # world -x. Voxel (4, 3, 2) with spacing (0.5, 2, 3) from (10, 20, 30):
    # world = (10 - 3 * 2, 20 + 4 * 0.5, 30 + 2 * 3) = (4, 22, 36)
    rot = (0, 1, 0, -1, 0, 0, 0, 0, 1)
    np.testing.assert_allclose(
        luna16.world_to_voxel((4.0, 22.0, 36.0), (10, 20, 30), (0.5, 2, 3), rot), (4, 3, 2)
    )


def test_extract_patch_planes_window_and_padding():
    z, y, x = np.meshgrid(np.arange(6), np.arange(7), np.arange(8), indexing="ij")
    volume = (100 * z + 10 * y + x).astype(np.float32) - 1000  # HU encodes the voxel
    lo, hi = luna16.MIN_BOUND, luna16.MAX_BOUND

    def hu(patch):
        return patch * (hi - lo) + lo

    p = luna16.Preprocessing(patch=4)
    axial = hu(luna16.extract_patch(volume, (3.4, 2.6, 1.0), p))  # nearest voxel x3 y3 z1
    np.testing.assert_allclose(axial[2, 2], volume[1, 3, 3], atol=1e-3)  # centre at [p // 2]
    np.testing.assert_allclose(axial[0], volume[1, 1, 1:5], atol=1e-3)  # rows y, columns x
    coronal = hu(
        luna16.extract_patch(volume, (3, 3, 1), luna16.Preprocessing(patch=4, plane="coronal"))
    )
    np.testing.assert_allclose(coronal[1:, 0], volume[0:3, 3, 1], atol=1e-3)  # rows z from z=-1
    np.testing.assert_allclose(coronal[0], lo)  # slice -1 is padding
    sagittal = hu(
        luna16.extract_patch(volume, (3, 3, 1), luna16.Preprocessing(patch=4, plane="sagittal"))
    )
    np.testing.assert_allclose(sagittal[1, :], volume[0, 1:5, 3], atol=1e-3)  # rows z, columns y
    # a centre beyond the last slice: all padding; far above the window: 1
    assert (luna16.extract_patch(volume, (3, 3, 9), p) == 0).all()
    assert (luna16.extract_patch(volume + 5000, (3, 3, 2), p) == 1).all()
    big = luna16.extract_patch(volume, (1, 1, 0), luna16.Preprocessing())
    assert big.shape == (64, 64) and (big[:31] == 0).all() and (big[:, :31] == 0).all()
    assert big[32, 32] == pytest.approx((volume[0, 1, 1] - lo) / (hi - lo)) and big[32, 32] > 0
    with pytest.raises(ValueError, match="plane"):
        luna16.Preprocessing(plane="oblique")
    assert luna16.Preprocessing().key() != luna16.Preprocessing(plane="coronal").key()
    assert luna16.Preprocessing().hu_window == (-1000, 1400) and luna16.Preprocessing().patch == 64


def test_negative_subsampling_and_subset_folds():
    df = pd.DataFrame(
        {
            "sample_id": [f"c{i:07d}" for i in range(60)],
            "labels": [["nodule"] if i % 10 == 0 else [] for i in range(60)],
            "source_split": [f"subset{i % 10}" for i in range(60)],
        }
    )
    keep = luna16.negative_subsample_mask(df, fraction=0.5, seed=1)
    positive = np.array([bool(v) for v in df.labels])
    assert keep[positive].all()
    per_subset = pd.Series(keep & ~positive).groupby(df.source_split).sum()
    negatives = pd.Series(~positive).groupby(df.source_split).sum()
    assert (per_subset == (negatives * 0.5).round()).all()
    shuffled = df.sample(frac=1, random_state=0)
    assert (luna16.negative_subsample_mask(shuffled, 0.5, 1) == keep[shuffled.index]).all()
    assert (luna16.negative_subsample_mask(df, 0.5, 2) != keep).any()
    folds = luna16.subset_folds(df)
    assert folds.dtype == np.int8 and list(folds[:10]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert list(luna16.subset_folds(df, folds=2)[:10]) == [0] * 5 + [1] * 5
    with pytest.raises(ValueError, match="subset0"):
        luna16.subset_folds(df.assign(source_split="train"))
