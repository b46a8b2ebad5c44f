"""``raysuite methods [NAME]`` and the registry behind it: built-ins, import paths and
entry points (group ``raysuite.methods``) found in ``*.dist-info`` folders on ``sys.path``;
what a method's card tells a spec writer; clear errors for what does not load."""

import subprocess
import sys
import textwrap
import uuid

import pytest

from raysuite.cli import main
from raysuite.methods import GROUP, METHODS, MODULES, module_of
from raysuite.spec import SpecError, parse_spec

# A method of one's own, in a module of its own: a training stage whose config mixes
# described fields, a commented field, a Literal, a nested model and an Optional; a job
# stage in the driver consuming it; post-hoc knobs, a baseline and one departure.
MODULE = '''
from typing import Literal

from pydantic import BaseModel, Field

from raysuite.methods.base import Method, OptimConfig, StageConfig, StageDef
from raysuite.methods.ledger import Departure


class Noise(BaseModel):
    sigma: float = Field(0.1, ge=0, description="std of the added noise")


class TrainConfig(OptimConfig):
    """Trains the toy model; seed section 2 gives the schedule."""

    epochs: int = Field(7, ge=1, description="passes over the toy set")
    loss: Literal["bce", "focal"] = "focal"  # the focal loss of the toy paper
    # a comment line above the field
    gamma: float | None = Field(None, gt=0)
    noise: Noise = Noise()


class SearchConfig(StageConfig):
    threshold: float = Field(0.5, ge=0, le=1, description="where the search starts")


METHOD = Method(
    name="{name}",
    seed="",
    description="a toy method of one's own",
    data_format="mura",
    stages={{
        "train": StageDef("train", TrainConfig, lambda inputs: None, cacheable=True),
        "search": StageDef("search", SearchConfig, job=lambda inputs, out: {{}}, consumes="train", job_on="driver"),
    }},
    monitor="val/auc",
    metrics={{"train": ("val/auc", "val/auc_best", "val/auc/Left", "val/auc/Right", "val/auc/Up", "val/auc/Down"),
              "search": ("search/threshold",)}},
    baseline={{"train.loss": "bce"}},
    posthoc_knobs={{"threshold": "probability above which an image is abnormal"}},
    departures=(Departure("train.epochs", "50 (section 2)", "7", "a toy"),),
)
'''


def _module(tmp_path, monkeypatch, method_name: str = "toy") -> str:
    """A fresh importable module (unique name) holding ``METHOD``; its import path."""
    module = f"toy_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(MODULE.format(name=method_name))
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def _dist(root, name: str, entries: dict[str, str]) -> None:
    """A ``<name>-1.0.dist-info`` folder under ``root``, as pip writes it, registering
    ``entries`` (entry point name -> value) in the raysuite.methods group."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")


def test_listing_names_every_builtin_with_its_facts(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    blocks = {block.split(": ", 1)[0]: block.split(": ", 1)[1] for block in out.strip().split("\n\n")}
    for name in MODULES:
        method = METHODS[name]
        block = blocks[name]
        assert block.startswith(f"seed {method.seed.split('_', 1)[0]}: {method.paper.cite()[:20]}")
        assert f"stages: {' -> '.join(s if d.recipe else f'{s} (job)' for s, d in method.stages.items())}" in block
        assert f"headline metric: {method.monitor}" in block
        assert f"{len(method.departures)} departures from the seed declared" in block
        assert method.monitor in block.split("metric keys:", 1)[1]
    assert "data format: flare22;" in out and "data format: several named datasets (data.sources)" in out
    # per-class families are written once: weak_localization's 14 val/auc/<class> keys
    assert "val/auc/* (14 keys)" in out and "val/auc/Atelectasis" not in out


def test_card_of_a_builtin_gives_types_defaults_meanings_keys_baseline(capsys):
    assert main(["methods", "weak_localization"]) == 0
    out = capsys.readouterr().out
    method = METHODS["weak_localization"]
    assert "stage train: training (the epoch loop, DDP workers); consumes nothing; cacheable" in out
    assert "stage crf: training (the epoch loop, DDP workers); consumes train; cacheable" in out
    # a field's meaning from the comment beside it in the source, its bounds from the Field
    assert "    loc_threshold: float, > 0, <= 1 = 0.1\n        T of IoU >= T / IoR >= T\n" in out
    assert '    loss: "seed" | "li" = "seed"\n' in out
    assert "    gamma: float | null, >= 0 = null\n        eq. 11; None: per class" in out
    # a field redeclared with the seed's default keeps OptimConfig's meaning
    assert "    epochs: int, >= 1 = 30\n        passes over the training set\n" in out
    assert 'baseline arm: train.loss="li"' in out
    assert "headline metric: val/loc_acc_iou" in out
    assert "val/loc_acc_iou/Atelectasis" in out and "crf/loss" in out  # every key, per stage
    assert f"departures from the seed: {len(method.departures)} declared" in out
    assert f"  - {method.departures[0].item}: " in out


def test_card_lists_nested_model_fields_under_dotted_names(capsys):
    assert main(["methods", "genesis_cls"]) == 0
    out = capsys.readouterr().out
    assert "    transforms: TransformsConfig (the defaults of its fields, transforms.<field> below)" in out
    assert "    transforms.flip_rate: float, >= 0, <= 1 = 0.4\n" in out
    assert "shared by every fold" in out  # genesis pretraining: StageDef.per_fold False


def test_card_of_an_import_path_method(tmp_path, monkeypatch, capsys):
    module = _module(tmp_path, monkeypatch)
    assert main(["methods", f"{module}:METHOD"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{module}:METHOD: a toy method of one's own\n  from: import path {module}:METHOD\n")
    assert "  data format: mura\n  headline metric: val/auc" in out
    assert "stage train: training (the epoch loop, DDP workers); consumes nothing; cacheable" in out
    assert "  Trains the toy model; seed section 2 gives the schedule." in out
    assert "    epochs: int, >= 1 = 7\n        passes over the toy set\n" in out
    assert '    loss: "bce" | "focal" = "focal"\n        the focal loss of the toy paper\n' in out
    assert "    gamma: float | null, > 0 = null\n        a comment line above the field\n" in out
    assert "    noise.sigma: float, >= 0 = 0.1\n        std of the added noise\n" in out
    # OptimConfig's shared fields, with their meaning, without the method redeclaring them
    assert "    lr: float, > 0 = 0.001\n        peak learning rate\n" in out
    assert "stage search: job (the trial's driver); consumes train; not cached" in out
    assert "    threshold: float, >= 0, <= 1 = 0.5\n        where the search starts\n" in out
    assert "    search/threshold\n" in out
    assert "train/loss, train/epoch, train/lr" in out and "val/auc/Left" in out
    assert 'baseline arm: train.loss="bce"' in out
    assert "post-hoc knobs (searched on saved predictions, never by retraining):\n" \
           "  threshold: probability above which an image is abnormal\n" in out  # fmt: skip
    assert "departures from the seed: 1 declared" in out and "  - train.epochs: 7" in out


def test_entry_points_are_listed_after_the_builtins_and_found_by_name(tmp_path, monkeypatch, capsys):
    module = _module(tmp_path, monkeypatch, method_name="toy_ep")
    _dist(tmp_path, "toy_dist", {"toy_ep": f"{module}:METHOD", "genesis_cls": f"{module}:METHOD"})
    names = list(METHODS)
    assert names[: len(MODULES)] == list(MODULES) and "toy_ep" in names[len(MODULES) :]
    assert names.count("genesis_cls") == 1 and len(METHODS) == len(names)
    assert module not in sys.modules  # listing names imports nothing
    method = METHODS["toy_ep"]
    assert method is sys.modules[module].METHOD and "toy_ep" in METHODS
    assert module_of("toy_ep") == module
    # a built-in name wins over an entry point of the same name
    assert METHODS["genesis_cls"].name == "genesis_cls"
    assert module_of("genesis_cls") == "raysuite.methods.genesis_cls"
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "\ntoy_ep: a toy method of one's own\n" in out
    assert f"  from: entry point {module}:METHOD of toy_dist 1.0\n" in out
    assert main(["methods", "toy_ep"]) == 0
    assert "stage search: job (the trial's driver)" in capsys.readouterr().out


def test_entry_points_that_do_not_load_are_named_with_their_value(tmp_path, monkeypatch, capsys):
    module = _module(tmp_path, monkeypatch, method_name="toy")
    _dist(tmp_path, "bad_dist", {
        "broken": "missing_module_xyz.method:METHOD", "not_a_method": "os:path", "misnamed": f"{module}:METHOD",
    })  # fmt: skip
    with pytest.raises(KeyError, match=r"entry point 'broken' = 'missing_module_xyz.method:METHOD' \(group "
                       r"raysuite.methods, distribution bad_dist 1.0\) cannot be loaded: ModuleNotFoundError"):  # fmt: skip
        METHODS["broken"]
    with pytest.raises(KeyError, match=r"entry point 'not_a_method' = 'os:path' .* is a module, not a raysuite Method"):
        METHODS["not_a_method"]
    with pytest.raises(KeyError, match=r"'misnamed' .* is the method named 'toy': an entry point's name is its method's"):
        METHODS["misnamed"]
    assert "broken" not in METHODS and "broken" in list(METHODS)
    # the listing shows the others and names each failure; it exits 1
    assert main(["methods"]) == 1
    captured = capsys.readouterr()
    assert "\nbroken: cannot be listed: entry point 'broken' = 'missing_module_xyz.method:METHOD'" in captured.out
    assert "iou_simsiam_seg: seed 001" in captured.out
    assert "3 registered method(s) cannot be loaded" in captured.err
    assert main(["methods", "broken"]) == 2
    assert "error: entry point 'broken' = 'missing_module_xyz.method:METHOD'" in capsys.readouterr().err
    # a spec naming it says why, not "unknown method"
    raw = {"name": "x", "method": "broken", "data": {"format": "mura", "root": "r"},
           "objective": {"metric": "val/auc", "mode": "max"}}  # fmt: skip
    with pytest.raises(SpecError, match=r"method: .*entry point 'broken' = .* cannot be loaded: ModuleNotFoundError"):
        parse_spec(raw, "spec.yaml")


def test_a_name_two_distributions_register_differently_is_refused(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, method_name="twice")
    _dist(tmp_path, "first_dist", {"twice": f"{module}:METHOD"})
    _dist(tmp_path, "second_dist", {"twice": "elsewhere.module:METHOD"})
    assert list(METHODS).count("twice") == 1
    with pytest.raises(KeyError, match=r"method 'twice' is registered twice: entry point 'twice' = .*; entry point"):
        METHODS["twice"]


def test_unknown_names_exit_2_with_the_known_ones(capsys):
    assert main(["methods", "genesis_clss"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown method 'genesis_clss'; known: iou_simsiam_seg, simclr_detection" in err
    assert "did you mean `genesis_cls`?" in err
    assert main(["methods", "os:path"]) == 2
    assert "error: method 'os:path' is a module, not a raysuite Method" in capsys.readouterr().err
    assert main(["methods", "no_such_module_q:METHOD"]) == 2
    assert "cannot be loaded: ModuleNotFoundError: No module named 'no_such_module_q'" in capsys.readouterr().err


def test_one_method_imports_no_other_method_module():
    """The registry stays lazy: listing and loading one method leaves the others unimported."""
    code = textwrap.dedent("""
        import sys
        from raysuite.methods import METHODS, MODULES
        names = list(METHODS)
        METHODS["iou_simsiam_seg"]
        print(sorted(m for m in MODULES.values() if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['raysuite.methods.iou_simsiam_seg']"
