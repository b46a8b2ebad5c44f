"""weak_localization (seed 003): the fold / unannotated split, spec checks and stage keys,
the Table 1 report, and a TINY run whose localisation beats constant predictors."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

from raysuite.methods import METHODS
from raysuite.methods import weak_localization as wl
from raysuite.methods.nn import pretrained
from raysuite.methods.nn.loc_metrics import localisation_table
from raysuite.methods.nn.pretrained import Need
from raysuite.plan import POINT, decode, grid_points, grid_trials, plan, repeat_points
from raysuite.spec import SpecError, load_spec, resolve_stage_configs
from raysuite.train.loop import fit, seed_everything
from raysuite.train.runtime import LocalRuntime

METHOD = METHODS["weak_localization"]

SPEC = """
name: t
method: weak_localization
data: {{format: chestxray14, root: {root}, cache_dir: {cache}}}
search:
  arms:
    ours: {{train.loss: seed, crf.enabled: true}}
    li_base: {{train.loss: li, train.antialias: false, crf.enabled: false}}
  grid: {{train.unannotated_fraction: [0.0, 0.2]}}
  repeats: {{fold: 2}}
objective: {{metric: val/loc_acc_iou, scope: last}}
tiny: true
"""


@pytest.fixture
def data(cxr14_root, tmp_path):
    return {"format": "chestxray14", "root": str(cxr14_root), "cache_dir": str(tmp_path / "cache")}


@pytest.fixture
def spec_path(write_spec, cxr14_root):
    return write_spec(SPEC, root=cxr14_root)


def test_folds_cover_the_annotated_images_and_draws_are_nested(data):
    tables = {(k, f): wl.splits(data, k, f) for k in range(5) for f in (0.0, 0.2, 0.5)}
    first = tables[0, 0.0]
    annotated = set(first.sample_id[first.annotated])
    vals = [set(tables[k, 0.0].sample_id[tables[k, 0.0].role == "val"]) for k in range(5)]
    assert set().union(*vals) == annotated and sum(map(len, vals)) == len(annotated)
    for (k, f), t in tables.items():
        train = t[t.role == "train"]
        assert set(train.sample_id[train.annotated]) == annotated - vals[k]
        assert not set(t.patient_key[t.role == "val"]) & set(train.patient_key)
        drawn = set(train.sample_id[~train.annotated])
        assert len(drawn) <= round(f * (~t.annotated).sum())
        assert f > 0 or not drawn
    for k in range(5):
        small = set(
            tables[k, 0.2].sample_id[(tables[k, 0.2].role == "train") & ~tables[k, 0.2].annotated]
        )
        large = set(
            tables[k, 0.5].sample_id[(tables[k, 0.5].role == "train") & ~tables[k, 0.5].annotated]
        )
        assert small < large


def test_arms_grid_and_folds_plan_and_keys(spec_path):
    spec = load_spec(spec_path)
    plans = [plan(spec, *decode(spec, {POINT: point})) for point in grid_trials(spec)]
    assert len(plans) == 2 * 2 * 2
    assert {p.label.split(",")[0] for p in plans} == {"ours", "li_base"}
    ours = [p for p in plans if p.label.startswith("ours")]
    assert all(p.configs["train"]["antialias"] and p.configs["crf"]["enabled"] for p in ours)
    li = [p for p in plans if p.label.startswith("li_base")]
    assert all(
        p.configs["train"]["loss"] == "li" and not p.configs["train"]["antialias"] for p in li
    )
    # a CRF change keeps the trained base model; folds and unannotated shares do not
    base = plan(spec, {"arm": "ours", "train.unannotated_fraction": 0.0}, {"fold": 0})
    crf = plan(
        spec, {"arm": "ours", "train.unannotated_fraction": 0.0, "crf.steps": 2}, {"fold": 0}
    )
    assert crf.keys["train"] == base.keys["train"] and crf.keys["crf"] != base.keys["crf"]
    other = plan(spec, {"arm": "ours", "train.unannotated_fraction": 0.2}, {"fold": 0})
    assert other.keys["train"] != base.keys["train"] and other.keys["crf"] != base.keys["crf"]
    assert (
        plan(spec, {"arm": "ours", "train.unannotated_fraction": 0.0}, {"fold": 1}).keys["train"]
        != base.keys["train"]
    )


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("grid: {train.unannotated_fraction: [0.0, 0.2]}", "grid: {train.tau_per_class.Hernia: [0.3]}"),
         "search.grid.train.tau_per_class.Hernia[0]"),
        (("grid: {train.unannotated_fraction: [0.0, 0.2]}", "grid: {train.thresholds: [alternate]}"),
         "search.arms.li_base"),  # Li's loss has no thresholds to alternate
        (("grid: {train.unannotated_fraction: [0.0, 0.2]}", "grid: {train.unannotated_fraction: [1.2]}"),
         "search.grid.train.unannotated_fraction[0]"),
        (("crf.enabled: true}", "crf.size: 4}"), "search.arms.ours.crf.size"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_with_their_key(spec_path, edit, key):
    spec_path.write_text(spec_path.read_text().replace(*edit))
    with pytest.raises(SpecError, match=r"spec\.yaml: (search|stages)\.") as err:
        load_spec(spec_path)
    assert err.value.key.startswith(key)


def test_shipped_sweeps_load_and_per_class_thresholds_resolve():
    for name in ("weak_loc_unannotated", "weak_loc_thresholds"):
        spec = load_spec(f"sweeps/{name}.yaml")
        assert spec.method == "weak_localization" and spec.objective.metric == "val/loc_acc_iou"
        for point in grid_points(spec):  # resolved without the data (plan hashes the manifest)
            overrides = {**point, **repeat_points(spec)[0]}
            configs = resolve_stage_configs(spec, overrides, where="search")
            # §4: "We take the batch size to be 48", the global batch over the DDP workers
            assert configs["train"]["batch_size"] == configs["crf"]["batch_size"] == 48
            if configs["train"]["loss"] == "seed":  # §4: the thresholds are alternately fitted
                assert configs["train"]["thresholds"] == "alternate", (name, point)
    cfg = wl.TrainConfig(tau=0.4, tau_per_class={"Nodule": 0.8}, rho_hat_per_class={"Hernia": 3.0})
    t = cfg.threshold_set()
    assert t.tau[wl.CLASSES.index("Nodule")] == pytest.approx(0.8) and t.tau[0] == pytest.approx(
        0.4
    )
    assert t.rho_hat[wl.CLASSES.index("Hernia")] == 3.0 and t.rho_hat[0] == 1.0


def test_gamma_counts_each_class_over_the_training_rows():
    rows = pd.DataFrame({"labels": [["Mass"], [], ["Mass", "Nodule"]]})
    gamma = wl._gamma(wl.TrainConfig(), rows).tolist()
    by_class = dict(zip(wl.CLASSES, gamma, strict=True))
    # Mass 2 of 3 -> 2/1, Nodule 1 of 3 -> 1/2, Hernia none -> floor of one positive, 1/3
    assert by_class["Mass"] == pytest.approx(2.0) and by_class["Nodule"] == pytest.approx(0.5)
    assert by_class["Hernia"] == pytest.approx(1 / 3)
    assert wl._gamma(wl.TrainConfig(gamma=0.25), rows).tolist() == [0.25] * len(wl.CLASSES)


def test_report_writes_table_1_per_accuracy_and_configuration(tmp_path):
    rows = []
    for config, un, loss in (("ours, un=0", 0.0, "seed"), ("li_base, un=0", 0.0, "li")):
        for shift in (0.0, 0.2):  # two folds
            row = {"config_id": config, "config": config, "param.stages.train.unannotated_fraction": str(un),
                   "param.stages.train.loss": loss, "param.stages.crf.enabled": str(loss == "seed"),
                   "param.stages.train.antialias": "True", "objective": 0.5 + shift, "val/loc_acc_ior": 0.6 + shift}  # fmt: skip
            row.update(
                {f"val/loc_acc_iou/{c}": 0.4 + shift for c in wl.BOX_CLASSES if c != "Pneumothorax"}
            )
            row.update(
                {
                    f"val/loc_acc_ior/{c}": 0.6 + shift
                    for c in wl.BOX_CLASSES
                    if c != "Nodule" or shift
                }
            )
            rows.append(row)
    [path] = wl.report(pd.DataFrame(rows), tmp_path, "val/loc_acc_iou")
    table = pd.read_csv(path)
    assert list(table.columns[:7]) == [
        "accuracy",
        "config",
        "un[%]",
        "loss",
        "crf",
        "antialias",
        "folds",
    ]
    assert list(table.accuracy) == ["IoU", "IoU", "IoR", "IoR"]
    assert list(table.columns[-9:]) == [*wl.BOX_CLASSES, "mean"]
    iou = table[table.accuracy == "IoU"].iloc[0]
    assert (
        iou["Nodule"] == "0.5000 ± 0.1000"  # folds 0.4, 0.6: population std (ddof 0) 0.1
        and iou["mean"] == "0.6000 ± 0.1000"  # objective 0.5, 0.7
        and iou["folds"] == 2
    )
    assert pd.isna(iou["Pneumothorax"])  # no fold evaluated it: the column stays, empty
    ior = table[table.accuracy == "IoR"].iloc[0]
    assert ior["Nodule"] == "0.8000 (n=1)" and ior["folds"] == 2  # one fold had it: no spread to show


def test_tiny_run_localises_better_than_constant_predictors(data, tmp_path):
    """The seed's loss with alternating thresholds, then a CRF epoch: the loss falls and the
    held-out fold's localisation accuracy beats predicting every patch, or none."""
    seed_everything(0)
    train = {
        "epochs": 8,
        "unannotated_fraction": 0.5,
        "thresholds": "alternate",
        "alternate_every": 3,
    }
    runtime = LocalRuntime(tmp_path / "ck")
    fit(METHOD.stages["train"].recipe(METHOD.tiny_inputs("train", data, {"train": train})), runtime)
    losses = [r["train/loss"] for r in runtime.reports]
    assert losses[-1] < 0.5 * losses[0]
    taus = [r["train/tau_mean"] for r in runtime.reports]
    assert taus[0] == pytest.approx(0.5) and taus[-1] != pytest.approx(0.5)  # fitted after epoch 3

    df = wl.splits(data, 0, 0.5)
    val = df[df.role == "val"].to_dict("records")
    boxes = [wl._class_boxes(r, 8) for r in val]
    constant = {
        name: np.mean([a["acc_iou"] for a in localisation_table(z, boxes, wl.CLASSES).values()])
        for name, z in (
            ("all", np.ones((len(val), 14, 8, 8))),
            ("none", np.zeros((len(val), 14, 8, 8))),
        )
    }
    final = runtime.reports[-1]
    # a clear margin over both; the held-out fold has few boxed images (accuracy moves in
    # steps of about 0.1), and which ones depends on the salt that keys the patient split
    assert final["val/loc_acc_iou"] > max(constant.values()) + 0.2, constant
    assert final["val/loc_acc_ior"] >= final["val/loc_acc_iou"]
    assert {f"val/loc_acc_iou/{c}" for c in wl.BOX_CLASSES} & set(final)

    crf_runtime = LocalRuntime(tmp_path / "ck-crf")
    inputs = METHOD.tiny_inputs(
        "crf", data, {"train": train, "crf": {"epochs": 1}}, {"train": runtime.checkpoints[-1]}
    )
    fit(METHOD.stages["crf"].recipe(inputs), crf_runtime)
    report = crf_runtime.reports[-1]
    assert report["crf/trial/epoch"] == 9.0 and np.isfinite(report["crf/loss"])
    assert 0.0 <= report["val/loc_acc_iou"] <= 1.0 and "crf/val_loc_acc_iou" in report
    assert report["crf/tau_mean"] == pytest.approx(
        taus[-1]
    )  # the CRF continues with the fitted thresholds


def _backbone_key(key: str) -> str:
    """A plain ResNet key as the anti-aliased backbone holds it: each strided shortcut
    ``downsample.{0,1}`` moved behind its BlurPool (``downsample.{1,2}``)."""
    return re.sub(r"\.downsample\.(\d)\.", lambda m: f".downsample.{int(m[1]) + 1}.", key)


@pytest.mark.parametrize("antialias", [True, False])  # the seed's model and Li et al.'s start alike
def test_imagenet_weights_are_the_backbones_start(pretrained_cache, antialias):
    assert wl.TrainConfig().weights == "imagenet" and METHOD.tiny["train"]["weights"] == "none"
    # a state dict where torchvision caches ResNet18_Weights.IMAGENET1K_V1
    placed = pretrained_cache.place("resnet18")
    inp = METHOD.tiny_inputs(
        "train", {}, {"train": {"weights": "imagenet", "antialias": antialias}}
    )
    assert METHOD.pretrained(inp.stages) == [Need("train.weights", "resnet18")]
    backbone = wl.train_model(inp).backbone.state_dict()
    kept = {k: v for k, v in placed.items() if not k.startswith("fc.")}
    assert len(kept) > 100
    for key, tensor in kept.items():
        assert torch.equal(backbone[_backbone_key(key) if antialias else key], tensor), key
    scratch = wl.train_model(METHOD.tiny_inputs("train", {})).backbone.state_dict()
    assert not torch.equal(scratch["layer1.0.conv1.weight"], placed["layer1.0.conv1.weight"])


def test_weights_that_do_not_fit_the_backbone_are_refused(pretrained_cache, tmp_path):
    # a ResNet-34 file where torchvision keeps the ResNet-18 weights: refused, naming the file
    pretrained_cache.place("resnet18", state=pretrained_cache.state("resnet34"))
    inp = METHOD.tiny_inputs("train", {}, {"train": {"weights": "imagenet"}})
    with pytest.raises(
        ValueError, match=r"resnet18-.*\.pth does not match .*unexpected: \['layer1\.2"
    ):
        wl.train_model(inp)
    bad = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, bad)
    inp = METHOD.tiny_inputs("train", {}, {"train": {"weights": str(bad)}})
    with pytest.raises(
        ValueError, match="wrong.pth does not match .*wrong shape: \\['conv1.weight'\\]"
    ):
        wl.train_model(inp)
    with pytest.raises(pretrained.WeightsUnavailable, match="wrong.pth does not fit resnet18"):
        pretrained.check_fit("resnet18", bad)  # the sweep driver's check before any trial
    pretrained_cache.clear()  # not in the cache and nothing is downloaded here: refused, not scratch
    with pytest.raises(pretrained.WeightsUnavailable, match="not in the cache"):
        wl.train_model(METHOD.tiny_inputs("train", {}, {"train": {"weights": "imagenet"}}))
