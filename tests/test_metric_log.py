"""Each (metric, step) once per MLflow run, across a retry that replays epochs from the last
checkpoint and across --resume (a new callback reading what the run already holds)."""

from raysuite.track import mlflow_runs as track
from raysuite.tune.callbacks import MetricLog
from raysuite.tune.outcome import CHECKPOINTED, COMPLETE


def _row(epoch, loss, checkpointed):
    return {"finetune/epoch": float(epoch), "finetune/loss": loss, CHECKPOINTED: float(checkpointed)}


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_a_retry_replaying_epochs_logs_each_step_once(tmp_path):
    client = track.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e")).info.run_id
    log = MetricLog(client, run, track.logged_steps(client, run))
    log.add(_row(1, 1.0, True))  # checkpoint at epoch 1
    log.add(_row(2, 0.9, False))
    log.add(_row(3, 0.8, False))  # the worker dies here: epochs 2-3 are replayed
    log.add(_row(2, 0.7, False))
    log.add(_row(3, 0.6, True))
    log.add({"pretrain/epoch": 1.0, "pretrain/loss": 5.0, "stage_cache/hit": 1.0})  # a cached stage's history
    log.add({"finetune/loss": 0.6, COMPLETE: 1.0})  # the driver's closing row: the outcome only
    assert _history(client, run, "finetune/loss") == [(1, 1.0), (2, 0.7), (3, 0.6)]
    assert _history(client, run, "pretrain/loss") == [(1, 5.0)]
    assert _history(client, run, COMPLETE) == [(0, 1.0)]
    assert CHECKPOINTED not in client.get_run(run).data.metrics

    # --resume: a new log for the same run, the trial's cached stage relayed again
    again = MetricLog(client, run, track.logged_steps(client, run))
    again.add({"pretrain/epoch": 1.0, "pretrain/loss": 5.0, "stage_cache/hit": 1.0})
    again.add(_row(3, 0.6, True))
    again.add(_row(4, 0.5, True))
    assert _history(client, run, "pretrain/loss") == [(1, 5.0)]
    assert _history(client, run, "finetune/loss") == [(1, 1.0), (2, 0.7), (3, 0.6), (4, 0.5)]


def test_a_dead_attempt_leaves_no_uncheckpointed_epoch(tmp_path):
    client = track.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e")).info.run_id
    log = MetricLog(client, run, set())
    log.add(_row(1, 1.0, True))
    log.add(_row(2, 0.9, False))
    log.discard()  # Tune retries the trial: epoch 2 will be replayed
    log.add(_row(2, 0.4, True))
    assert _history(client, run, "finetune/loss") == [(1, 1.0), (2, 0.4)]
