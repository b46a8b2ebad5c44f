import glob
from types import SimpleNamespace

import pytest

from raysuite.cli import main
from raysuite.spec import SpecError, load_spec
from raysuite.spec_yaml import expand_env, expand_tree

BASE = """
name: t
method: iou_simsiam_seg
data: {format: flare22, root: /tmp/x}
stages:
  pretrain: {epochs: 2, iou_interval: [0.3, 0.6]}
search:
  grid: {pretrain.iou_interval: [[0.3, 0.6], null]}
objective: {metric: val/dice}
"""


def test_shipped_specs_and_cluster_validate(capsys):
    assert main(["validate", *sorted(glob.glob("sweeps/*.yaml")), "cluster.yaml"]) == 0


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("epochs: 2,", "epoch: 2,"), "stages.pretrain.epoch"),
        (("iou_interval: [0.3, 0.6]}", "iou_interval: [0.7, 0.6]}"), "stages.pretrain"),
        (("iou_interval: [0.3, 0.6]}", "iou_interval: [0.3, 1.6]}"), "stages.pretrain"),
        (("pretrain.iou_interval:", "pretrain.iou_intervl:"), "search.grid.pretrain.iou_intervl"),
        (("[[0.3, 0.6], null]", "[[0.3, 0.6], [0.9, 0.1]]"), "search.grid.pretrain.iou_interval[1]"),
        (("objective:", "objectiv:"), "objectiv"),
        (("format: flare22", "format: mura"), "data.format"),
        (("epochs: 2,", "epochs: many,"), "stages.pretrain.epochs"),
        (("epochs: 2,", "epochs: 2, feature_size: 24,"), "stages.finetune.feature_size"),
    ],
)
def test_bad_spec_exits_2_naming_file_and_key(tmp_path, capsys, edit, key, write_spec):
    path = write_spec(BASE.replace(*edit))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and key in err


def test_sweep_refuses_bad_spec_before_ray_starts(tmp_path, capsys, monkeypatch, write_spec):
    import raysuite.tune.sweep

    started = []
    monkeypatch.setattr(raysuite.tune.sweep, "run_sweep", lambda *a, **k: started.append(a))
    path = write_spec(BASE.replace("epochs: 2,", "epoch: 2,"))
    assert main(["sweep", str(path)]) == 2
    assert started == []


def test_env_expansion():
    assert expand_env("${A:-x}/y", {}) == "x/y"
    assert expand_env("${A:-x}/y", {"A": "/data"}) == "/data/y"
    assert expand_env("$$5 and $${A}", {"A": "no"}) == "$5 and ${A}"
    with pytest.raises(KeyError, match=r"^'A'$"):
        expand_env("${A}", {})


def test_env_expands_values_only_as_text(tmp_path, monkeypatch, write_spec):
    """Not in comments (an unset variable there is harmless) nor keys; a newline in a value
    stays inside its string instead of adding keys."""
    monkeypatch.delenv("RAYSUITE_TEST_UNSET", raising=False)
    monkeypatch.setenv("RAYSUITE_TEST_NAME", "t\nmethod: genesis_cls")
    text = "# run with ${RAYSUITE_TEST_UNSET} set\n" + BASE.replace("name: t", 'name: "${RAYSUITE_TEST_NAME}"')
    spec = load_spec(write_spec(text))
    assert (spec.name, spec.method) == ("t\nmethod: genesis_cls", "iou_simsiam_seg")
    assert expand_tree({"${A}": ["${A}", 3]}, "p", {"A": "x"}) == {"${A}": ["x", 3]}


def test_set_shorthand_grid_axes_and_arms(tmp_path, write_spec):
    spec = load_spec(
        write_spec(BASE),
        ["pretrain.lr=0.05", "search.grid.finetune.lr=[0.1, 0.01]", "search.repeats.finetune.seed=2"],
    )
    assert spec.stages["pretrain"]["lr"] == 0.05
    assert spec.search.grid == {"pretrain.iou_interval": [[0.3, 0.6], None], "finetune.lr": [0.1, 0.01]}
    assert spec.search.repeats == {"finetune.seed": 2}
    spec = load_spec("sweeps/one_case_vs_baseline.yaml", ["search.arms.one_case.segmenter.lr=0.01"])
    assert spec.search.arms["one_case"]["segmenter.lr"] == 0.01


def test_validate_takes_set_items(tmp_path, capsys, write_spec):
    path = write_spec(BASE)
    assert main(["validate", str(path), "--set", "finetune.epochs=3"]) == 0
    assert main(["validate", str(path), "--set", "finetune.epochs=0"]) == 2
    assert "stages.finetune.epochs" in capsys.readouterr().err


def test_sweep_and_train_refuse_a_missing_data_root_before_ray(tmp_path, capsys, monkeypatch, write_spec):
    import raysuite.tune.sweep

    started = []
    outcome = SimpleNamespace(parent_run_id="p", stage_runs={}, summary=SimpleNamespace(empty=True), failed=False)
    monkeypatch.setattr(raysuite.tune.sweep, "run_sweep", lambda *a, **k: started.append(a) or outcome)
    monkeypatch.setattr(raysuite.tune.sweep, "run_single", lambda *a, **k: started.append(a))
    path = write_spec(BASE.replace("/tmp/x", str(tmp_path / "absent")))
    assert main(["validate", str(path)]) == 0  # validate checks the data with --data only
    for command in (["sweep"], ["train"], ["validate", "--data"]):
        assert main([*command, str(path)]) == 2
        assert "data.root" in capsys.readouterr().err
    assert started == []
    assert main(["sweep", str(path), "--smoke"]) == 0  # smoke synthesises its data
    assert len(started) == 1


def test_set_override_and_iou_min_width(tmp_path, write_spec):
    spec = load_spec(write_spec(BASE), ["stages.pretrain.lr=0.05"])
    assert spec.stages["pretrain"]["lr"] == 0.05
    with pytest.raises(SpecError, match="iou_width"):
        load_spec(write_spec(BASE), ["stages.pretrain.iou_min=0.2"])


def test_smoke_epochs_win_over_an_arms_own_schedule():
    """Seed 002's Figure 5.1 cells each set their epochs through an arm; --smoke still runs
    every one of them at the smoke length, and keeps what the arms compare."""
    from raysuite.methods import METHODS
    from raysuite.plan import all_points
    from raysuite.spec import resolve_stage_configs, smoke

    full = load_spec("sweeps/genesis_transfer.yaml")
    shrunk = smoke(full)
    epochs = METHODS["genesis_cls"].smoke["finetune"]["epochs"]
    configs = [resolve_stage_configs(shrunk, p, where="search") for p in all_points(shrunk)]
    assert {c["finetune"]["epochs"] for c in configs} == {epochs}
    assert {(c["pretrain"]["init"], c["pretrain"]["encoder"], c["finetune"]["task"]) for c in configs} == {
        (c["pretrain"]["init"], c["pretrain"]["encoder"], c["finetune"]["task"])
        for c in (resolve_stage_configs(full, p, where="search") for p in all_points(full))
    }
