"""End to end on local Ray: a search sweep whose surviving trials run every stage (ASHA over
whole configurations, Optuna beside the grid arms), and a diverged trial that fails once,
without retries."""


import pytest

from raysuite.spec import load_spec, smoke
from raysuite.track import mlflow_runs as track

pytestmark = pytest.mark.e2e


def test_one_case_search_smoke_runs_every_stage_of_surviving_trials(ray_session, mlflow_uri, tmp_path, monkeypatch):
    from raysuite.tune.sweep import run_sweep

    monkeypatch.setenv("RAYSUITE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RAYSUITE_STORAGE", str(tmp_path / "storage"))
    # the smoke spec, shorter still: Optuna alone (2 configurations x 2 folds), 4 segmenter
    # epochs (rungs 1 and 3), the classifier gate on
    spec = smoke(load_spec("sweeps/one_case_search.yaml"))
    spec.stages["segmenter"]["epochs"], spec.stages["classifier"]["epochs"] = 4, 2
    spec.stages["classifier"]["enabled"], spec.stages["segmenter"]["positives_only"] = True, True
    spec.search.scheduler.asha.max_t = 4
    spec.search.arms = {}
    outcome = run_sweep(spec)
    assert not outcome.failed
    client = track.client(mlflow_uri)
    runs = track.children(client, outcome.parent_run_id)
    assert {r.data.tags["raysuite.study"] for r in runs} == {"optuna"} and len(runs) == 4
    for run in runs:
        status, tags, metrics = run.info.status, run.data.tags, run.data.metrics
        assert status in ("FINISHED", "KILLED"), (status, tags)
        if status == "FINISHED":
            assert "posthoc/combinations" in metrics and metrics["raysuite/complete"] == 1.0
            assert track.PRUNED not in tags
        else:
            assert int(tags[track.PRUNED]) in (1, 3) and "raysuite/complete" not in metrics
    by_config: dict[str, set[str]] = {}
    for run in runs:
        by_config.setdefault(run.data.tags["raysuite.config_id"], set()).add(run.info.status)
    assert all(len(s) == 1 for s in by_config.values()), by_config  # repeats decided together
    summary = outcome.summary
    assert set(summary.n) <= {0, 2} and summary.pruned.sum() == sum(r.info.status == "KILLED" for r in runs)


SPEC = """
name: diverge
method: iou_simsiam_seg
data: {{format: flare22, root: {root}, cache_dir: {cache}}}
stages:
  pretrain: {{epochs: 1, max_slices_per_epoch: 16}}
  finetune: {{epochs: 3, labelled_cases: 3, val_cases: 2, warmup_epochs: 1, eval_every: 1, patience: null}}
search:
  grid: {{pretrain.iou_interval: [null]}}
objective: {{metric: val/dice, mode: max}}
resources: {{workers_per_trial: 1, max_concurrent_trials: 1, max_failures: 2}}
storage: {storage}
tiny: true
faults: {{stage: finetune, diverge_at_epoch: 2}}
"""


def test_a_diverged_trial_fails_once_without_retries(ray_session, mlflow_uri, tmp_path, flare_root, write_spec):
    from raysuite.tune.sweep import run_sweep

    path = write_spec(SPEC, root=flare_root, storage=tmp_path / "s")
    outcome = run_sweep(load_spec(path))
    client = track.client(mlflow_uri)
    (run,) = track.children(client, outcome.parent_run_id)
    assert run.info.status == "FAILED" and run.data.tags[track.FAILURE] == "diverged"
    drills = list((tmp_path / "s" / "faults").glob("*.diverged"))
    assert len(drills) == 1 and drills[0].read_text().count("diverged at epoch 2") == 1  # one attempt
    assert [s for s, _ in track.metric_history(client, run.info.run_id, "finetune/loss")] == [1]
    assert outcome.summary.empty or outcome.summary.n.sum() == 0
