"""``raysuite plan SPEC --json`` for every shipped sweep: the trials and their stages, the
skipped configurations, the pretrained starts the seeds used, and the departures."""

from __future__ import annotations

import glob
import json

import pytest

from raysuite import cli
from raysuite.methods import METHODS
from raysuite.methods.ledger import lookup
from raysuite.spec import load_spec

SWEEPS = sorted(glob.glob("sweeps/*.yaml"))


@pytest.fixture(autouse=True)
def _storage(tmp_path, monkeypatch):
    """An empty stage cache: what a finished demo left in ./ray_results is not reused here."""
    monkeypatch.setenv("RAYSUITE_STORAGE", str(tmp_path / "storage"))


def _plan(capsys, *args: str) -> dict:
    assert cli.main(["plan", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.split("/")[-1])
def test_plan_json_of_every_shipped_sweep(path, capsys, pretrained_cache):
    out = _plan(capsys, path, "--json")
    spec = load_spec(path)
    method = METHODS[spec.method]
    assert {"trials", "skipped", "departures", "totals", "estimate", "weights"} <= set(out)
    assert out["totals"]["trials"] == len(out["trials"]) + (
        out["optuna"]["trials"] if out["optuna"] else 0
    )
    assert (
        out["trials"] or out["optuna"] or out["skipped"]
    )  # offline, a sweep of pretrained arms is all skipped
    for trial in out["trials"]:
        assert set(trial) == {"config", "repeat", "stages"} and set(trial["stages"]) == set(
            method.stages
        )
        configs = {name: stage["config"] for name, stage in trial["stages"].items()}
        for stage in trial["stages"].values():
            assert set(stage) == {"config", "key", "computes"}
        # a pretrained start the seed used is never silently none: it is the seed's, or skipped
        for key, wanted in method.seed_design(configs).items():
            if key.rsplit(".", 1)[-1].endswith("weights") and wanted not in (None, "none"):
                assert lookup(configs, key) not in (None, "none"), (trial["config"], key)
    skipped = {row["config"] for row in out["skipped"]}
    assert not skipped & {trial["config"] for trial in out["trials"]}
    # offline and with empty caches, every named pretrained start is unavailable, so its
    # configurations are listed as skipped with the reason, never run from scratch
    named = [
        row for row in out["weights"] if row["value"] not in ("none",) and "/" not in row["value"]
    ]
    for row in named:
        assert row["unavailable"] and "not in the cache" in row["unavailable"]
    if named:
        assert any("not in the cache" in row["reason"] for row in out["skipped"])
    ledger = [row for row in out["departures"] if row["kind"] == "ledger"]
    assert len(ledger) == len(method.departures)
    assert method.departures, f"{spec.method} declares no departures from its seed"
    assert method.paper is not None and out["paper"] == method.paper.cite()


def test_weak_localization_trials_use_the_seeds_global_batch(capsys, pretrained_cache):
    for path in ("sweeps/weak_loc_unannotated.yaml", "sweeps/weak_loc_thresholds.yaml"):
        pretrained_cache.place("resnet50")
        out = _plan(capsys, path, "--json")
        assert not out["skipped"]
        batches = {t["stages"]["train"]["config"]["batch_size"] for t in out["trials"]}
        assert batches == {48}, path


def test_cached_weights_make_the_arm_run_and_plan_says_from_which_file(capsys, pretrained_cache):
    pretrained_cache.place("resnet50")
    out = _plan(capsys, "sweeps/weak_loc_unannotated.yaml", "--json")
    assert not out["skipped"] and out["trials"]
    (row,) = out["weights"]
    assert (
        row["key"] == "train.weights" and row["value"] == "imagenet" and row["unavailable"] is None
    )
    assert row["file"].endswith(".pth") and "hub/checkpoints/resnet50-" in row["file"]


def test_plan_text_names_the_paper_totals_estimate_and_departures(capsys):
    assert cli.main(["plan", "sweeps/quickstart.yaml"]) == 0
    text = capsys.readouterr().out
    assert METHODS["iou_simsiam_seg"].paper.title in text
    assert "totals: 6 trials; trainings per stage {'pretrain': 2, 'finetune': 6}" in text
    assert "estimate:" in text and "an estimate" in text
    assert "departures from the seed:" in text


def test_a_cached_stage_is_shared_within_the_sweep(capsys):
    out = _plan(capsys, "sweeps/quickstart.yaml", "--json")
    pretrain = [t["stages"]["pretrain"] for t in out["trials"]]
    computed = [s for s in pretrain if s["computes"] is True]
    # three configurations x 2 fine-tuning seeds: one pretraining per interval, none for "no pretraining"
    assert len(computed) == 2 and sum(s["computes"] is False for s in pretrain) == 2
    assert sum(isinstance(s["computes"], str) for s in pretrain) == 2  # skipped by its config


def test_methods_lists_each_paper(capsys):
    assert cli.main(["methods"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # a long title wraps onto a second line
    for name, method in METHODS.items():
        assert f"{name}: seed" in text and method.paper.title in text


def test_a_stage_the_storage_holds_is_reused(capsys, tmp_path, flare_root, write_spec):
    from raysuite.data.datasets import ensure_manifest
    from raysuite.tune import stage_cache

    spec = write_spec({
        "name": "p", "method": "iou_simsiam_seg", "tiny": True,
        "data": {"format": "flare22", "root": str(flare_root), "cache_dir": str(tmp_path / "cache")},
        "stages": {"finetune": {"labelled_cases": 3, "val_cases": 2}},
        "search": {"grid": {"pretrain.iou_interval": [[0.3, 0.6], [0, 1]]}},
        "objective": {"metric": "val/dice", "mode": "max"},
    })  # fmt: skip
    ensure_manifest(load_spec(spec).data.model_dump())
    first = _plan(capsys, str(spec), "--json")
    assert first["keys"] == "final"
    keys = [t["stages"]["pretrain"]["key"] for t in first["trials"]]
    assert all(t["stages"]["pretrain"]["computes"] is True for t in first["trials"])
    stage_cache.write_marker(str(tmp_path / "storage"), keys[0], {"checkpoint": "x", "history": []})
    second = _plan(capsys, str(spec), "--json")
    assert [t["stages"]["pretrain"]["computes"] for t in second["trials"]] == [False, True]
    assert [t["stages"]["finetune"]["computes"] for t in second["trials"]] == [True, True]
