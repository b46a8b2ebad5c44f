"""End to end on local Ray: a label-fraction sweep of simclr_detection on synthetic VinDr-CXR
DICOMs that carry a made-up patient identity. The parent run gets the label-fraction curve,
the stage cache pretrains once, and no file, log or MLflow store the sweep leaves behind
holds any of the identifying strings."""

import textwrap
from pathlib import Path

import pydicom
import pytest

from raysuite.data import privacy
from raysuite.spec import load_spec
from raysuite.track import mlflow_runs as track

pytestmark = pytest.mark.e2e

SPEC = """
name: e2e-fractions
method: simclr_detection
data: {{format: vindr_cxr, root: {root}, cache_dir: {cache}}}
stages:
  pretrain: {{epochs: 1, batch_size: 8, warmup_epochs: 0}}
  finetune: {{epochs: 2}}
search:
  grid: {{pretrain.fraction: [0.0, 0.5]}}
  repeats: {{finetune.seed: 1}}
objective: {{metric: val/map40, mode: max}}
resources: {{workers_per_trial: 1, max_concurrent_trials: 1, max_failures: 0}}
storage: {storage}
tiny: true
"""


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_label_fraction_sweep_leaks_no_identity(ray_session, tmp_path, vindr_root, monkeypatch, capfd):
    import ray

    from raysuite.tune.sweep import run_sweep

    identity = set()  # whole values, and name components long enough to be identifying
    for path in vindr_root.rglob("*.dicom"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in privacy.IDENTIFYING_KEYWORDS:
            value = str(getattr(ds, keyword, "") or "")
            identity.update(v for v in [value, *value.split("^")] if len(v) >= 6)
    assert any("^" in v for v in identity) and any(v.startswith("ACC") for v in identity)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(textwrap.dedent(SPEC.format(root=vindr_root, cache=tmp_path / "cache", storage=tmp_path / "storage")))
    outcome = run_sweep(load_spec(spec_path))
    assert not outcome.failed
    assert outcome.stage_runs == {"pretrain": 1}  # fraction 0 is the baseline: nothing to pretrain
    client = track.client(uri)
    runs = track.children(client, outcome.parent_run_id)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert [s for s, _ in track.metric_history(client, run.info.run_id, "val/map40")] == [1, 2]
        assert "test/map40" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"label_fraction_curve.png", "summary.csv"} <= artifacts

    captured = capfd.readouterr()
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    for path in _files(tmp_path, logs):  # storage, manifests, shard cache, mlflow.db, Ray logs
        blob = path.read_bytes()
        for value in identity:
            assert value.encode() not in blob, f"{value!r} found in {path}"
    for value in identity:
        assert value not in captured.out + captured.err
