import glob
import textwrap

import pytest

from raysuite.cli import main
from raysuite.spec import SpecError, expand_env, load_spec

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


def write(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


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
def test_bad_spec_exits_2_naming_file_and_key(tmp_path, capsys, edit, key):
    path = write(tmp_path, BASE.replace(*edit))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and key in err


def test_sweep_refuses_bad_spec_before_ray_starts(tmp_path, capsys, monkeypatch):
    import raysuite.tune.sweep

    started = []
    monkeypatch.setattr(raysuite.tune.sweep, "run_sweep", lambda *a, **k: started.append(a))
    path = write(tmp_path, BASE.replace("epochs: 2,", "epoch: 2,"))
    assert main(["sweep", str(path)]) == 2
    assert started == []


def test_env_expansion():
    assert expand_env("${A:-x}/y", {}) == "x/y"
    assert expand_env("${A:-x}/y", {"A": "/data"}) == "/data/y"
    with pytest.raises(KeyError):
        expand_env("${A}", {})


def test_set_override_and_iou_min_width(tmp_path):
    spec = load_spec(write(tmp_path, BASE), ["stages.pretrain.lr=0.05"])
    assert spec.stages["pretrain"]["lr"] == 0.05
    with pytest.raises(SpecError, match="iou_width"):
        load_spec(write(tmp_path, BASE), ["stages.pretrain.iou_min=0.2"])
