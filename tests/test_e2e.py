"""End to end on local Ray (2 CPUs): a smoke sweep with 2 gloo DDP workers into a
temporary MLflow sqlite store, a worker failure retried from its checkpoint into the same
run, and --resume of an interrupted sweep. Few and small: each TorchTrainer costs ~20 s."""


import pytest

from raysuite.spec import load_spec, smoke
from raysuite.track import mlflow_runs as track

pytestmark = pytest.mark.e2e

SPEC = """
name: {name}
method: iou_simsiam_seg
data: {{format: flare22, root: {root}, cache_dir: {cache}}}
stages:
  pretrain: {{epochs: 1, max_slices_per_epoch: 32}}
  finetune: {{epochs: 2, labelled_cases: 3, val_cases: 2, warmup_epochs: 1, eval_every: 1, patience: null}}
search:
  grid: {{pretrain.iou_interval: {grid}}}
  repeats: {{finetune.seed: 2}}
objective: {{metric: val/dice, mode: max}}
resources: {{workers_per_trial: {workers}, max_concurrent_trials: 1, max_failures: {failures}}}
storage: {storage}
tiny: true
faults: {{stage: finetune, fail_once_at_epoch: 1, only_seed: 1}}
"""


def _spec(write_spec, flare_root, **kw):
    return load_spec(write_spec(SPEC, root=flare_root, **kw))


def _epochs(client, run_id):
    return [step for step, _ in track.metric_history(client, run_id, "finetune/epoch")]


def test_smoke_sweep_two_ddp_workers(ray_session, mlflow_uri, tmp_path, flare_root, write_spec):
    from raysuite.tune.sweep import run_sweep

    # one interval x 2 fine-tuning seeds: the no-pretraining arm runs in the resume test
    spec = _spec(write_spec, flare_root, name="e2e", grid="[[0.3, 0.6]]", workers=2, failures=1)
    outcome = run_sweep(spec)
    assert not outcome.failed
    assert outcome.stage_runs == {"pretrain": 1}  # two fine-tunings shared one pretraining
    client = track.client(mlflow_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags[track.ROLE] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.metrics["stage_cache/pretrain_trainings"] == 1
    runs = track.children(client, outcome.parent_run_id)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert run.data.tags[track.ROLE] == "trial"
        assert [s for s, _ in track.metric_history(client, run.info.run_id, "val/dice")] == [1, 2]
        # the worker failure (seed 1) was retried from its epoch-1 checkpoint, same run
        assert _epochs(client, run.info.run_id) == [1, 2]
        assert len(track.metric_history(client, run.info.run_id, "pretrain/collapse")) == 1
    assert len(outcome.summary) == 1 and set(outcome.summary.n) == {2}
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"summary.csv", "spec.yaml", "training_curves.png"} <= artifacts


def test_resume_interrupted_sweep(ray_session, mlflow_uri, tmp_path, flare_root, write_spec):
    from raysuite.tune.sweep import run_sweep

    spec = _spec(write_spec, flare_root, name="e2e-resume", grid="[null]", workers=1, failures=0)
    first = run_sweep(spec)
    assert first.failed  # seed 1 died with no retries left: the sweep is interrupted
    client = track.client(mlflow_uri)
    by_seed = {r.data.tags["raysuite.repeat"]: r for r in track.children(client, first.parent_run_id)}
    assert by_seed['{"finetune.seed": 1}'].info.status == "FAILED"
    done = by_seed['{"finetune.seed": 0}']
    assert done.info.status == "FINISHED"

    second = run_sweep(spec, resume=True)
    assert not second.failed and second.parent_run_id == first.parent_run_id
    runs = track.children(client, first.parent_run_id)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert _epochs(client, run.info.run_id) == [1, 2]  # nothing trained twice
    assert len(second.summary) == 1 and second.summary.n.iloc[0] == 2


def test_smoke_shrinks_the_seed_design():
    spec = smoke(load_spec("sweeps/iou_intervals.yaml"))
    assert spec.tiny and spec.data.synthetic_if_missing and spec.resources.gpus_per_worker == 0
    assert len(spec.search.grid["pretrain.iou_interval"]) == 6 and spec.search.repeats == {"pretrain.seed": 2, "finetune.seed": 2}
