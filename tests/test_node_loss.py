"""Node losses don't use up the retries meant for real errors.

In process: which Train failures are node losses, and how many of each a stage survives.
End to end, on a multi-node cluster (``ray.cluster_utils.Cluster``: a head node with no CPUs,
where the trial drivers live, and two 1-CPU worker nodes): one node is removed while a
trial's stage trains on it, then a node is added back. ``max_failures: 0``: a node loss
counted as a real error would fail the trial, so the sweep ends FINISHED only if the lost
stage resumed outside that budget."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from conftest import free_port, start_local_ray
from ray.cluster_utils import Cluster
from ray.exceptions import RayActorError
from ray.train import PreemptionError, WorkerGroupError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
from ray.train.v2.api.preemption import PreemptionInfo
from ray.util.state import list_actors

from raysuite.spec import load_spec
from raysuite.track import mlflow_runs as track
from raysuite.tune import trial

EPOCHS = 3
SPEC = """
name: node-loss
method: iou_simsiam_seg
data: {{format: flare22, root: {root}, cache_dir: {cache}}}
stages:
  pretrain: {{epochs: 1, max_slices_per_epoch: 32}}
  finetune: {{epochs: {epochs}, labelled_cases: 3, val_cases: 2, warmup_epochs: 1, eval_every: 1, patience: null}}
search:
  grid: {{pretrain.iou_interval: [null]}}
  repeats: {{finetune.seed: 2}}
objective: {{metric: val/dice, mode: max}}
resources: {{workers_per_trial: 1, max_concurrent_trials: 2, max_failures: 0}}
storage: {storage}
tiny: true
"""
TRAIN_WORKER = "RayTrainWorker"


def _dead_worker(preempted: bool = False, actor_id: str = "a1") -> WorkerHealthCheckFailedError:
    """A worker as Train reports it once its actor is gone."""
    return WorkerHealthCheckFailedError("A worker health check failed.", RayActorError(actor_id, "died", preempted=preempted))


def _group_error(*failures: Exception) -> WorkerGroupError:
    return WorkerGroupError("\n".join(map(str, failures)), dict(enumerate(failures)))


@pytest.fixture
def death_causes(monkeypatch):
    """What the State API says of each dead actor: ``death_causes[actor_id] = reason``."""
    causes: dict[str, str] = {}

    def get_actor(actor_id, address):
        reason = causes.get(actor_id)
        cause = {"actor_died_error_context": {"reason": reason}} if reason else None
        return type("ActorState", (), {"death_cause": cause})()

    monkeypatch.setattr(trial, "get_actor", get_actor)
    monkeypatch.setattr(trial.ray, "get_runtime_context", lambda: type("Context", (), {"gcs_address": "gcs"})())
    return causes


def test_node_losses_are_told_from_real_errors(death_causes):
    death_causes.update(removed="NODE_DIED", crashed="WORKER_DIED")
    # Train's own verdict: a drained (preempted) node, before or after its workers died
    assert trial._lost_with_node(PreemptionError(PreemptionInfo(deadline_ms=None, preempted_node_to_ranks={"n": [0]})))
    assert trial._lost_with_node(_group_error(_dead_worker(preempted=True)))
    # a node removed without a drain: Ray says preempted=False, its GCS says the node died;
    # the surviving rank's collateral error does not make it a real one
    assert trial._lost_with_node(_group_error(RuntimeError("gloo: connection reset"), _dead_worker(actor_id="removed")))
    # real errors: an exception in the training code, a worker process that died on its own
    assert not trial._lost_with_node(_group_error(RuntimeError("a bug")))
    assert not trial._lost_with_node(_group_error(_dead_worker(actor_id="crashed")))
    assert not trial._lost_with_node(_group_error(_dead_worker(actor_id="unknown")))


def test_node_state_unknown_counts_as_a_real_error(death_causes, monkeypatch):
    def down(actor_id, address):
        raise ConnectionError("dashboard down")

    monkeypatch.setattr(trial, "get_actor", down)
    assert not trial._lost_with_node(_group_error(_dead_worker()))


class _Trainer:
    """A trainer whose fits fail with ``failures`` in turn, then succeed."""

    def __init__(self, failures: list[Exception]):
        self.failures, self.fits = list(failures), 0

    def __call__(self) -> "_Trainer":
        return self

    def fit(self) -> str:
        self.fits += 1
        if self.failures:
            raise self.failures.pop(0)
        return "result"


def test_node_losses_do_not_use_up_the_retries(death_causes):
    lost, bug = _group_error(_dead_worker(preempted=True)), _group_error(RuntimeError("a bug"))
    trainer = _Trainer([lost, bug, lost, lost])
    assert trial._fit(trainer, "stage", train_retries=1) == "result" and trainer.fits == 5
    with pytest.raises(WorkerGroupError, match="a bug"):
        trial._fit(_Trainer([bug, lost, bug]), "stage", train_retries=1)
    with pytest.raises(WorkerGroupError, match="a bug"):
        trial._fit(_Trainer([bug]), "stage", train_retries=0)  # a sweep: Tune retries the trial


def test_node_losses_are_bounded(death_causes):
    lost = _group_error(_dead_worker(preempted=True))
    trainer = _Trainer([lost] * (trial.NODE_LOSSES + 1))
    with pytest.raises(WorkerGroupError, match="A worker health check failed"):
        trial._fit(trainer, "stage", train_retries=0)
    assert trainer.fits == trial.NODE_LOSSES + 1
    # one node loss more than the bound costs a retry, as a real error does
    assert trial._fit(_Trainer([lost] * (trial.NODE_LOSSES + 1)), "stage", train_retries=1) == "result"


@pytest.fixture(scope="module")
def cluster():
    """The cluster, with no Ray connection of this process's own: the sweep connects to
    it. The session's local Ray (``ray_session``), if a test started it, comes back after."""
    restore = ray.is_initialized()
    ray.shutdown()
    # the dashboard (the State API) on a port of its own: another Ray on this machine may hold
    # 8265, and without it the sweep could not tell a lost node from a real error
    dashboard = {"include_dashboard": True, "dashboard_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **dashboard})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if restore:
        start_local_ray()  # as ray_session started it


def _train_workers(address: str, **filters: str) -> list[Any]:
    """Train's worker actors (State API), with ``filters`` as ``field=value``."""
    where = [("class_name", "=", TRAIN_WORKER), *((k, "=", v) for k, v in filters.items())]
    return list_actors(address=address, filters=where, detail=True, raise_on_missing_output=False)


def _remove_a_training_node(cluster: Cluster, storage: Path, sweep: threading.Thread, timeout_s: float = 300) -> str | None:
    """Once a stage has written its first checkpoint, remove a worker node on which a Train
    worker is alive, then add a node back (here: Ray's nodes start only from the main
    thread); the removed node's id, or None when the sweep ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and sweep.is_alive():
        time.sleep(0.5)
        if not any(storage.glob("*-finetune/checkpoint_*")):
            continue
        try:
            alive = {a.node_id for a in _train_workers(cluster.address, state="ALIVE")}
        except Exception:  # noqa: BLE001 - the dashboard is still starting
            continue
        node = next((n for n in cluster.worker_nodes if n.node_id in alive), None)
        if node is not None:
            cluster.remove_node(node)
            cluster.add_node(num_cpus=1)
            return node.node_id
    return None


@pytest.mark.e2e
def test_sweep_survives_a_lost_worker_node(cluster, mlflow_uri, tmp_path, flare_root, write_spec):
    from raysuite.tune.sweep import run_sweep

    storage = tmp_path / "storage"
    path = write_spec(SPEC, root=flare_root, storage=storage, epochs=EPOCHS)
    spec = load_spec(path)
    done: dict[str, Any] = {}
    sweep = threading.Thread(target=lambda: done.update(outcome=run_sweep(spec, address=cluster.address)))
    sweep.start()
    lost = _remove_a_training_node(cluster, storage, sweep)
    sweep.join()
    assert lost, "no worker node was removed while a stage trained"
    outcome = done["outcome"]

    # the removed node hosted a Train worker, which died with it; its stage ran again
    workers = _train_workers(cluster.address)
    dead = [a for a in workers if a.node_id == lost]
    assert dead and {a.state for a in dead} == {"DEAD"}
    assert any(a.death_cause["actor_died_error_context"]["reason"] == "NODE_DIED" for a in dead)
    assert len(workers) == 3  # two trials' fine-tunings, one of them fitted a second time

    assert not outcome.failed
    client = track.client(mlflow_uri)
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"
    runs = track.children(client, outcome.parent_run_id)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # the plan: 1 config x 2 seeds
    for run in runs:
        # the interrupted stage resumed from its checkpoint: no epoch trained twice or skipped
        steps = [s for s, _ in track.metric_history(client, run.info.run_id, "finetune/epoch")]
        assert steps == list(range(1, EPOCHS + 1))
    assert len(outcome.summary) == 1 and outcome.summary.n.iloc[0] == 2
