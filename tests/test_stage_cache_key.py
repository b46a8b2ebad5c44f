"""The stage-cache key covers the code computing the stage and its world size; `raysuite
cache ls/rm` list and clear entries, `--stale` the ones computed by other code."""

import shutil

import pytest

from raysuite import cli, code_fingerprint, plan
from raysuite.spec import parse_spec
from raysuite.tune import stage_cache

RAW = {
    "name": "k",
    "method": "iou_simsiam_seg",
    "objective": {"metric": "val/dice"},
    "stages": {"pretrain": {"batch_size": 8}, "finetune": {"batch_size": 4, "labelled_cases": 3, "val_cases": 2}},
    "search": {"grid": {"pretrain.iou_interval": [[0.3, 0.6]]}},
}


@pytest.fixture()
def data(flare_root, tmp_path):
    return {"format": "flare22", "root": str(flare_root), "cache_dir": str(tmp_path / "cache")}


def _keys(data, **resources):
    spec = parse_spec({**RAW, "data": data, "resources": resources})
    return plan.plan(spec, {"pretrain.iou_interval": [0.3, 0.6]}, {}).keys


def test_key_changes_with_the_world_size(data):
    one, two = _keys(data, workers_per_trial=1), _keys(data, workers_per_trial=2)
    assert one["pretrain"] != two["pretrain"] and one["finetune"] != two["finetune"]
    assert _keys(data, workers_per_trial=2) == two  # and is stable


def test_key_changes_with_the_code_fingerprint(data, monkeypatch):
    before = _keys(data)
    monkeypatch.setattr(plan, "code_fingerprint", lambda method: "a bug fixed")
    after = _keys(data)
    assert before["pretrain"] != after["pretrain"]


def test_fingerprint_follows_the_modules_a_method_imports(tmp_path, monkeypatch):
    copy = tmp_path / "raysuite"
    shutil.copytree(code_fingerprint.ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_fingerprint, "ROOT", copy)

    def fp():
        code_fingerprint.modules_of.cache_clear()
        code_fingerprint.fingerprint.cache_clear()
        return code_fingerprint.fingerprint("raysuite.methods.iou_simsiam_seg")

    modules = code_fingerprint.modules_of("raysuite.methods.iou_simsiam_seg")
    assert {"raysuite.train.loop", "raysuite.methods.nn.simsiam", "raysuite.data.crops"} <= set(modules)
    assert "raysuite.report.sweep_report" not in modules and "raysuite.methods.genesis_cls" not in modules
    base = fp()
    (copy / "report" / "sweep_report.py").write_text("# the report changed\n")  # not imported: same key
    assert fp() == base
    (copy / "data" / "crops.py").write_text((copy / "data" / "crops.py").read_text() + "\n# a fix\n")
    assert fp() != base


def _entry(storage, key, code):
    stage_cache.write_marker(str(storage), key, {"checkpoint": "x", "stage": "pretrain", "method": "iou_simsiam_seg",
                                                 "code": code, "sweep": "k", "created": "2026-12-01T10:00:00Z"})  # fmt: skip
    (storage / "stage_cache" / key / "weights.pt").write_bytes(b"0" * 2048)


def test_fingerprint_follows_a_method_packages_own_modules(tmp_path, monkeypatch):
    """A method of your own (``my_pkg.method``): an edit of a sibling module it imports
    (``my_pkg.losses``) changes the key; one of a module it does not import does not."""
    pkg = tmp_path / "my_fp_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "losses.py").write_text("def loss():\n    return 1\n")
    (pkg / "unused.py").write_text("X = 1\n")
    (pkg / "method.py").write_text("from my_fp_pkg.losses import loss\nfrom raysuite.methods.base import Method\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def fingerprint() -> str:
        code_fingerprint.modules_of.cache_clear()
        code_fingerprint.fingerprint.cache_clear()
        return code_fingerprint.fingerprint("my_fp_pkg.method")

    before = fingerprint()
    assert {"my_fp_pkg.method", "my_fp_pkg.losses", "raysuite.methods.base"} <= set(code_fingerprint.modules_of("my_fp_pkg.method"))
    (pkg / "unused.py").write_text("X = 2\n")
    assert fingerprint() == before
    (pkg / "losses.py").write_text("def loss():\n    return 2\n")
    assert fingerprint() != before


def test_cache_ls_and_rm(tmp_path, capsys):
    current = plan.code_fingerprint("iou_simsiam_seg")
    _entry(tmp_path, "fresh", current)
    _entry(tmp_path, "old", "0" * 32)
    (tmp_path / "stage_cache" / "dying").mkdir()  # a computation that died: no marker
    by_key = {e["key"]: e for e in stage_cache.entries(str(tmp_path))}
    assert by_key["fresh"]["stale"] is False and by_key["fresh"]["size"] > 2048
    assert by_key["old"]["stale"] is True and by_key["dying"]["complete"] is False
    assert cli.main(["cache", "ls", "--storage", str(tmp_path)]) == 0
    assert "3 entries" in capsys.readouterr().out
    assert cli.main(["cache", "rm", "--stale", "--storage", str(tmp_path)]) == 0
    assert {e["key"] for e in stage_cache.entries(str(tmp_path))} == {"fresh", "dying"}
    assert cli.main(["cache", "rm", "dying", "--storage", str(tmp_path)]) == 0
    assert cli.main(["cache", "rm", "nope", "--storage", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.main(["cache", "rm", "--storage", str(tmp_path)]) == 2  # neither keys nor --stale


@pytest.mark.parametrize("max_t", [10, 17])
def test_asha_max_t_short_of_the_progress_stage_is_refused(max_t):
    from raysuite.spec import SpecError, load_spec

    with pytest.raises(SpecError, match=r"search\.scheduler\.asha\.max_t: 1[07] is below segmenter\.epochs \(18\)") as err:
        load_spec("sweeps/one_case_search.yaml", [f"search.scheduler.asha.max_t={max_t}"])
    assert err.value.key == "search.scheduler.asha.max_t" and "segmenter.epochs (18)" in err.value.message
