"""Manifest schema, patient-level splits, nested label fractions, shard cache, salting."""

import numpy as np
import pandas as pd
import pytest

from raysuite.cli import main
from raysuite.data import manifest, privacy
from raysuite.data.cache import ShardCache
from raysuite.data.datasets import errors_path


def _rows(n_patients=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(int(rng.integers(1, 4))):  # 1..3 images per patient
            labels = [] if rng.random() < 0.4 else sorted(set(rng.choice(["a", "b", "c", "rare"], 2, p=[0.4, 0.3, 0.25, 0.05])))
            rows.append(
                {
                    "sample_id": f"img{p:03d}_{k}",
                    "patient_key": f"p_{p:03d}",
                    "path": f"train/img{p:03d}_{k}.dicom",
                    "height": 64,
                    "width": 48,
                    "labels": labels,
                    "boxes": [{"label": c, "x_min": 1.0, "y_min": 2.0, "x_max": 10.5, "y_max": 20.0, "readers": 2} for c in labels],
                    "mask": "rle:3 4" if k == 0 else None,
                    "extra": {"k": k},
                }
            )
    return manifest.frame(rows)


def test_round_trip_keeps_every_column_and_hash(tmp_path):
    df = manifest.assign_splits(_rows(), seed=3)
    digest = manifest.write(df, tmp_path / "m.parquet", "vindr_cxr", tmp_path)
    back, meta = manifest.read(tmp_path / "m.parquet")
    assert meta == {"format": "vindr_cxr", "root": str(tmp_path.resolve()), "schema": "1", "hash": digest}
    assert manifest.content_hash(back) == digest
    assert back.labels.tolist() == df.labels.tolist()
    assert back.boxes.tolist() == df.boxes.tolist()
    assert any(b and b[0]["x_max"] == 10.5 and b[0]["readers"] == 2 for b in back.boxes)
    assert back["mask"].tolist() == df["mask"].tolist() and back["mask"].isna().sum() == df["mask"].isna().sum()
    assert back.split.tolist() == df.split.tolist()
    shuffled = df.sample(frac=1, random_state=0)
    assert manifest.content_hash(shuffled) == digest  # row order does not matter
    changed = df.copy()
    changed.loc[0, "split"] = "test" if changed.loc[0, "split"] != "test" else "train"
    assert manifest.content_hash(changed) != digest


def test_splits_are_by_patient_with_ratios():
    df = manifest.assign_splits(_rows(200), (0.7, 0.1, 0.2), seed=1)
    assert df.groupby("patient_key").split.nunique().max() == 1
    share = df.split.value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.03 and abs(share["val"] - 0.1) < 0.03 and abs(share["test"] - 0.2) < 0.03
    again = manifest.assign_splits(_rows(200), (0.7, 0.1, 0.2), seed=1)
    other = manifest.assign_splits(_rows(200), (0.7, 0.1, 0.2), seed=2)
    assert (again.split == df.split).all() and (other.split != df.split).any()
    with pytest.raises(manifest.ManifestError, match="sum"):
        manifest.assign_splits(df, (0.7, 0.2, 0.2))


def test_leaking_patient_is_refused(tmp_path):
    df = manifest.assign_splits(_rows(), seed=0)
    multi = df.patient_key.value_counts().index[0]
    rows = df.index[df.patient_key == multi]
    df.loc[rows[0], "split"] = "train"
    df.loc[rows[1], "split"] = "test"
    with pytest.raises(manifest.ManifestError, match=f"{multi} in \\['test', 'train'\\]"):
        manifest.check_patient_splits(df)
    with pytest.raises(manifest.ManifestError, match=r"1 patient\(s\) appear in more than one split"):
        manifest.write(df, tmp_path / "m.parquet", "vindr_cxr", tmp_path)
    assert not (tmp_path / "m.parquet").exists()


def test_folds_by_patient():
    df = manifest.assign_folds(_rows(100), folds=5, seed=0)
    assert sorted(df.fold.unique()) == [0, 1, 2, 3, 4]
    assert df.groupby("patient_key").fold.nunique().max() == 1
    sizes = df.fold.value_counts()
    assert sizes.max() - sizes.min() <= 3  # dealt by load: within one patient's images
    held = manifest.fold_split(df, 2)
    assert set(held[held.split == "test"].fold) == {2} and (held[held.split == "train"].fold != 2).all()


def test_label_fractions_are_nested_stratified_and_seeded():
    df = _rows(300)
    masks = {f: manifest.labelled_mask(df, f, seed=7) for f in (0.1, 0.2, 0.5, 0.9)}
    assert (masks[0.1] <= masks[0.2]).all() and (masks[0.2] <= masks[0.5]).all() and (masks[0.5] <= masks[0.9]).all()
    assert masks[0.1].sum() == round(0.1 * len(df)) and masks[0.9].sum() == round(0.9 * len(df))
    # stratified by rarest label: each stratum keeps its share to within rounding
    freq = {}
    for labels in df.labels:
        for c in labels:
            freq[c] = freq.get(c, 0) + 1
    strata = pd.Series([min(lab, key=lambda c: (freq[c], c)) if lab else "" for lab in df.labels])
    for stratum, idx in strata.groupby(strata).groups.items():
        assert abs(masks[0.2][idx].sum() - 0.2 * len(idx)) <= 1, stratum
    other = manifest.labelled_mask(df, 0.2, seed=8)
    assert (other != masks[0.2]).any() and other.sum() == masks[0.2].sum()
    assert manifest.labelled_mask(df.sample(frac=1, random_state=1).reset_index(drop=True), 0.2, seed=7).sum() == masks[0.2].sum()
    assert manifest.labelled_mask(df, 0.0).sum() == 0 and manifest.labelled_mask(df, 1.0).all()


def test_shard_cache_memory_maps_and_rekeys(tmp_path):
    calls = []

    def load(sample_id):
        calls.append(sample_id)
        return np.full((4, 5), int(sample_id[1:]) / 10, np.float32)

    ids = [f"s{i}" for i in range(7)]
    cache = ShardCache(tmp_path / "m.parquet", "hash1", "prep", ids, load, shard_size=3)
    assert cache["s4"][0, 0] == pytest.approx(0.4, abs=1e-3)
    assert sorted(calls) == ["s3", "s4", "s5"]  # only the shard holding s4 was built
    cache.build()
    assert len(calls) == 7
    fresh = ShardCache(tmp_path / "m.parquet", "hash1", "prep", ids, load, shard_size=3)
    assert fresh["s6"][2, 3] == pytest.approx(0.6, abs=1e-3) and len(calls) == 7  # read, not rebuilt
    assert isinstance(fresh._shard(0), np.memmap)
    ShardCache(tmp_path / "m.parquet", "hash2", "prep", ids, load, shard_size=3)["s0"]
    assert len(calls) == 10  # a new manifest hash is a new cache


def test_salted_keys_depend_on_the_salt(monkeypatch):
    monkeypatch.setenv("RAYSUITE_SALT", "salt-one-0123456789")
    a = privacy.salted_key("PID-1")
    assert a == privacy.salted_key(" PID-1 ") and a != privacy.salted_key("PID-2")
    monkeypatch.setenv("RAYSUITE_SALT", "salt-two-0123456789")
    assert privacy.salted_key("PID-1") != a and "PID" not in a


def test_cli_ingest_counts_and_exit_codes(flare_root, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    assert main(["data", "ingest", "flare22", str(flare_root), str(out), "--workers", "1", "--split", "0.6,0.2,0.2"]) == 0
    printed = capsys.readouterr().out
    assert "found 10  ingested 10  failed 0" in printed and errors_path(out).exists()
    df, _ = manifest.read(out)
    assert set(df.split) <= {"train", "val", "test"} and df.groupby("patient_key").split.nunique().max() == 1
    assert main(["data", "ingest", "flare22", str(tmp_path / "nowhere"), str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["data", "ingest", "flare22", str(flare_root), str(out), "--split", "0.5,0.5"]) == 2


def test_training_side_splits_may_share_a_patient():
    df = manifest.assign_splits(_rows(), seed=0)
    train_patient = df[df.split == "train"].patient_key.value_counts().index[0]
    rows = df.index[df.patient_key == train_patient]
    df.loc[rows[0], "split"] = "unlabelled"  # the pretraining pool may hold a training patient
    manifest.check_patient_splits(df)
    df.loc[rows[1], "split"] = "val"
    with pytest.raises(manifest.ManifestError, match=train_patient):
        manifest.check_patient_splits(df)
