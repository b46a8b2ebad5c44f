"""End to end on local Ray: seed 004's cascade against its baseline on one fold, then
the same sweep with only the post-hoc settings changed, which must train nothing (every
model and the saved predictions come from the stage cache)."""

import io
from pathlib import Path

import pandas as pd
import pytest
import torch

from raysuite.spec import load_spec
from raysuite.track import mlflow_runs as track

pytestmark = pytest.mark.e2e

SPEC = """
name: e2e-cascade
method: one_case_cascade
data: {{format: siim_acr, root: {root}, cache_dir: {cache}}}
stages:
  classifier: {{epochs: 1, weights: imagenet}}
  segmenter: {{epochs: 2, frozen_epochs: 1, weights: imagenet}}
  posthoc: {{pixel_thresholds: [0.3, 0.5, 0.7], cls_thresholds: [0.3, 0.6], min_areas: [0, 16]}}
search:
  arms:
    one_case: {{classifier.enabled: true, segmenter.positives_only: true}}
    baseline: {{classifier.enabled: false, segmenter.positives_only: false}}
  repeats: {{fold: 1}}
objective: {{metric: val/dice_per_image, mode: max, scope: last}}
resources: {{workers_per_trial: 1, max_concurrent_trials: 2, max_failures: 0}}
storage: {storage}
tiny: true
"""


def _artifact(client, run_id, name):
    path = client.download_artifacts(run_id, name)
    return pd.read_csv(io.StringIO(open(path).read()))


def test_cascade_vs_baseline_then_posthoc_only_change_trains_nothing(
    ray_session, tmp_path, siim_root, monkeypatch, pretrained_cache, write_spec
):
    from raysuite.tune.sweep import DEPARTURES, run_sweep

    # both models start from ImageNet (the tiny arch of each is a ResNet-18): one file in
    # torchvision's cache, resolved once by the driver into the storage for both fields
    placed = pretrained_cache.place("resnet18")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec_path = write_spec(SPEC, root=siim_root)
    text = spec_path.read_text()
    first = run_sweep(load_spec(spec_path))
    assert not first.failed
    assert first.stage_runs == {"classifier": 1, "segmenter": 2, "predict": 2}
    summary = first.summary.set_index("config")
    assert set(summary.index) == {"one_case", "baseline"} and (summary.n == 1).all()
    assert summary.metric.eq("val/dice_per_image").all()
    client = track.client(uri)
    runs = track.children(client, first.parent_run_id)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["raysuite.repeat"] for r in runs} == {'{"fold": 0}'}
    for run in runs:
        search = _artifact(client, run.info.run_id, "posthoc/val_search.csv")
        gated = run.data.tags["raysuite.config"] == "one_case"
        assert len(search) == 3 * (2 if gated else 1) * 2 * 2
        assert run.data.metrics["val/dice_per_image"] == pytest.approx(search.dice_per_image.max())
        assert ("val/cls_auc" in run.data.metrics) == gated
        assert {"test/dice_per_image", "test/tta/dice", "val/argmax/iou"} <= set(run.data.metrics)
    table = _artifact(client, first.parent_run_id, "table_5_1.csv")
    assert set(table.postprocessing) == {"ArgMax", "Raw", "TTA", "Searched (beyond the thesis)"}
    assert set(table.config) == {"one_case", "baseline"}
    (stored,) = (tmp_path / "storage" / "weights").iterdir()
    assert stored.name.startswith("resnet18-")
    assert all(torch.equal(torch.load(stored / "state_dict.pt")[k], v) for k, v in placed.items())
    for run in runs:
        tags = run.data.tags
        assert tags["raysuite.weights.segmenter.weights"] == stored.name
        assert tags.get("raysuite.weights.classifier.weights") == (stored.name if tags["raysuite.config"] == "one_case" else None)
    parent = client.get_run(first.parent_run_id)
    assert DEPARTURES in {a.path for a in client.list_artifacts(first.parent_run_id)}
    departures = Path(client.download_artifacts(first.parent_run_id, DEPARTURES)).read_text()
    assert "Pneumothorax Segmentation" in departures and "`segmenter.epochs` 2 ≠ 18" in departures
    html = Path(client.download_artifacts(first.parent_run_id, "report.html")).read_text()
    assert "Departures from the seed" in html and "segmenter.epochs" in html
    assert parent.info.status == "FINISHED"

    spec_path.write_text(text.replace("min_areas: [0, 16]", "min_areas: [0, 8, 32], tta: [flip]"))
    second = run_sweep(load_spec(spec_path))
    assert not second.failed
    assert second.stage_runs == {}  # no model retrained, no prediction recomputed
    hits = client.get_run(second.parent_run_id).data.metrics
    assert hits["stage_cache/segmenter_hits"] == 2 and hits["stage_cache/predict_hits"] == 2
    for run in track.children(client, second.parent_run_id):
        assert len(_artifact(client, run.info.run_id, "posthoc/val_search.csv")) % 3 == 0
        assert run.data.metrics["posthoc/tta_flip"] == 1.0
