"""Do the GPUs stay busy while pretraining is shared? Seed 001's design on a simulated cluster.

``ray.cluster_utils.Cluster`` starts a head node (CPUs for the sweep's drivers, no GPU) and
``--nodes`` nodes of ``--gpus-per-node`` fake GPUs (Ray resources only: logical CPUs, no
CUDA). The real sweep machinery (``raysuite.tune.sweep.run_sweep``) runs seed 001's design
(``sweeps/iou_intervals.yaml``: 5 intervals and a no-pretraining arm, pretrain.seed x
finetune.seed = 2 x 2: 10 pretrainings, 24 fine-tunings; one worker and one GPU a trial)
with the benchmark method ``cluster_sim_method``, whose stages sleep ``--pretrain-s`` and
``--finetune-s`` seconds in a Ray Train worker holding a GPU and record when.

Printed, with the goals beside:

- ``wall``: run_sweep's start to its return (what a user waits: connecting, the studies,
  the report); ``stage span``: first sleep's start to last sleep's end.
- ``busy``: device-seconds the stages held a GPU asleep (sleep x GPUs held).
- ``utilisation`` = busy / (devices x wall), also over the stage span.
- ``ideal``: a lower bound on the makespan of these stages on this many devices with no
  overhead: the largest of the longest chain (pretrain + finetune), work / devices, and
  two bounds that count whole stages (a stage never splits over devices; see
  :func:`lower_bound`). A list schedule (longest remaining chain first) is printed beside
  it: where the two agree the ideal is the optimum. ``makespan/ideal`` uses ``wall``.
- the handover from a pretraining to its fine-tuning and the gaps between stages on one
  device: what Ray's start-up of a worker group costs here.

Stage lengths decide what is reachable at all: with equal lengths (20 s and 20 s) 34
whole stages on 8 devices need 5 rounds (100 s) where work / devices is 85 s, so no
scheduler exceeds 0.85 utilisation. The default 60 s / 20 s (near seed 001's ratio of
pretraining to fine-tuning time, §4.6) packs into 140 s: a ceiling of 0.96.

    .venv/bin/python benchmarks/cluster_sim.py [--pretrain-s 60] [--finetune-s 20] [--keep]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
INTERVALS = [[0, 0], [0.0001, 0.3], [0.3, 0.6], [0.6, 1.0], [0, 1], None]  # seed 001, Table 4.2
GOAL_UTILISATION, GOAL_RATIO = 0.90, 1.10


def write_spec(work: Path, pretrain_s: float, finetune_s: float, max_concurrent: int) -> Path:
    """Seed 001's design (``sweeps/iou_intervals.yaml``) with the sleeping method."""
    records = str(work / "records")
    spec = {
        "name": "cluster-sim",
        "method": "cluster_sim_method:METHOD",
        "data": {"format": "flare22", "root": str(work / "no-data")},  # read by nothing
        "stages": {
            "pretrain": {"seconds": pretrain_s, "record_dir": records},
            "finetune": {"seconds": finetune_s, "record_dir": records},
        },
        "search": {"grid": {"pretrain.interval": INTERVALS}, "repeats": {"pretrain.seed": 2, "finetune.seed": 2}},
        "objective": {"metric": "val/score", "mode": "max", "scope": "last"},
        "resources": {"workers_per_trial": 1, "gpus_per_worker": 1, "cpus_per_worker": 1,
                      "max_concurrent_trials": max_concurrent, "max_failures": 0},  # fmt: skip
        "storage": str(work / "storage"),
    }
    (work / "no-data").mkdir(parents=True, exist_ok=True)
    path = work / "cluster_sim.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------- the ideal
# A job is (duration, index of the job it consumes or None).


def design_jobs(pretrain_s: float, finetune_s: float) -> list[tuple[float, int | None]]:
    """Seed 001's stages: per interval 2 pretrainings of 2 fine-tunings each; the
    no-pretraining arm's 4 fine-tunings consume nothing."""
    jobs: list[tuple[float, int | None]] = []
    for _ in range(len(INTERVALS) - 1):
        for _ in range(2):
            jobs.append((pretrain_s, None))
            jobs += [(finetune_s, len(jobs) - 1)] * 2
    return jobs + [(finetune_s, None)] * 4


def lower_bound(jobs: list[tuple[float, int | None]], devices: int) -> dict[str, float]:
    """Lower bounds on the makespan of ``jobs`` (whole, each on one device, after the job
    it consumes) on ``devices`` devices, with no overhead:

    - ``chain``: the longest chain of consumed jobs;
    - ``work/devices``: all the work spread evenly;
    - ``whole jobs``: of the k x devices + 1 longest jobs some device runs k + 1, each at
      least as long as the (k x devices + 1)-th longest;
    - ``producers``: some device runs ceil(producers / devices) of the jobs others consume,
      at least the sum of that many of the shortest; the last one's consumers run after it;
    - ``first release``: nothing that consumes a job starts before the shortest producer
      ends (t); until then at most min(devices x t, what the free jobs hold before t) is
      done, the rest spread evenly after t.
    """
    total = sum(d for d, _ in jobs)
    depth: list[float] = []
    for d, parent in jobs:  # parents come first
        depth.append(d + (depth[parent] if parent is not None else 0.0))
    durations = sorted((d for d, _ in jobs), reverse=True)
    whole = float(max((k + 1) * durations[k * devices] for k in range((len(jobs) - 1) // devices + 1)))
    children: dict[int, list[float]] = defaultdict(list)
    for d, parent in jobs:
        if parent is not None:
            children[parent].append(d)
    producers = sorted(jobs[i][0] for i in children)
    bounds = {"chain": max(depth), "work/devices": total / devices, "whole jobs": whole}
    if producers:
        q = -(-len(producers) // devices)
        bounds["producers"] = sum(producers[:q]) + min(min(c) for c in children.values())
        t = producers[0]
        early = min(devices * t, sum(min(d, t) for d, parent in jobs if parent is None))
        bounds["first release"] = t + (total - early) / devices
    return bounds


def list_schedule(jobs: list[tuple[float, int | None]], devices: int) -> float:
    """Makespan of a list schedule (a device never idles while a job is ready; ready jobs
    go longest remaining chain first): an achievable makespan, so the optimum is between
    :func:`lower_bound` and this."""
    tail = [d for d, _ in jobs]
    for i in range(len(jobs) - 1, -1, -1):  # children come after their parent
        parent = jobs[i][1]
        if parent is not None:
            tail[parent] = max(tail[parent], jobs[parent][0] + tail[i])
    released = {i: 0.0 for i, (_, parent) in enumerate(jobs) if parent is None}
    free = [0.0] * devices
    end = 0.0
    while released:
        now = heapq.heappop(free)
        ready = [i for i, t in released.items() if t <= now] or [min(released, key=released.__getitem__)]
        job = max(ready, key=lambda i: (tail[i], -i))
        start = max(now, released.pop(job))
        finish = start + jobs[job][0]
        heapq.heappush(free, finish)
        end = max(end, finish)
        released.update({i: finish for i, (_, parent) in enumerate(jobs) if parent == job})
    return end


# ------------------------------------------------------------------------ the cluster


def start_cluster(nodes: int, gpus: int, cpus: int, head_cpus: int) -> Any:
    """A head (CPUs, no GPU) and ``nodes`` nodes of ``gpus`` fake GPUs and ``cpus`` CPUs."""
    from ray.cluster_utils import Cluster

    store = 150 * 1024 * 1024  # small object stores: every node shares this machine's memory
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": head_cpus, "num_gpus": 0, "object_store_memory": store},
    )
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus, num_gpus=gpus, object_store_memory=store)
    cluster.wait_for_nodes()
    return cluster


def handovers(records: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(each fine-tuning's start minus its pretraining's end, the least of the two per
    pretraining: the producing trial's own handover; every gap between consecutive stages on
    one device)."""
    by_id = {r["id"]: r for r in records}
    after: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r["upstream"]:
            after[r["upstream"]].append(r["start"] - by_id[r["upstream"]]["end"])
    device: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        for gpu in r["gpus"]:
            device[(r["node"], str(gpu))].append(r)
    gaps = []
    for stages in device.values():
        stages.sort(key=lambda r: r["start"])
        gaps += [b["start"] - a["end"] for a, b in zip(stages, stages[1:], strict=False)]
    return [min(v) for v in after.values()], gaps


def _stat(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"min {min(values):5.1f}  median {statistics.median(values):5.1f}  max {max(values):5.1f} s"


def summarise(records: list[dict[str, Any]], start: float, end: float, args: argparse.Namespace) -> None:
    """Print the figures of a sweep that ran from ``start`` to ``end`` (epoch seconds)."""
    devices = args.nodes * args.gpus_per_node
    counts = {s: sum(r["stage"] == s for r in records) for s in ("pretrain", "finetune")}
    busy = sum((r["end"] - r["start"]) * len(r["gpus"]) for r in records)
    wall = end - start
    span = max(r["end"] for r in records) - min(r["start"] for r in records)
    jobs = design_jobs(args.pretrain_s, args.finetune_s)
    work = sum(d for d, _ in jobs)
    bounds = lower_bound(jobs, devices)
    ideal = max(bounds.values())
    scheduled = list_schedule(jobs, devices)
    own, gaps = handovers(records)
    optimum = "the optimum" if scheduled <= ideal + 1e-9 else "the optimum lies between"
    print(f"seed 001's design, stages asleep: pretrain {args.pretrain_s:g} s, finetune {args.finetune_s:g} s; "
          f"max_concurrent_trials {args.max_concurrent}")  # fmt: skip
    print(f"devices                : {devices} ({args.nodes} nodes x {args.gpus_per_node} fake GPUs)")
    print(f"stages run             : {counts['pretrain']} pretrainings, {counts['finetune']} fine-tunings (design: 10, 24)")
    print(f"wall (sweep start->end): {wall:7.1f} s")
    print(f"stage span             : {span:7.1f} s (first sleep start -> last sleep end)")
    print(f"busy device-seconds    : {busy:7.1f} (design: {work:.0f})")
    print(f"utilisation            : {busy / (devices * wall):7.3f}  (goal >= {GOAL_UTILISATION}; over the stage span {busy / (devices * span):.3f})")
    print(f"ideal (lower bound)    : {ideal:7.1f} s  ({', '.join(f'{k} {v:.1f}' for k, v in bounds.items())})")
    print(f"  list schedule        : {scheduled:7.1f} s  ({optimum}); utilisation ceiling {work / (devices * ideal):.3f}")
    print(f"makespan/ideal         : {wall / ideal:7.3f}  (goal <= {GOAL_RATIO}; stage span / ideal {span / ideal:.3f})")
    print(f"pretrain -> finetune   : {_stat(own)}  (a producing trial's handover: Train run end, cache marker, next worker group)")
    print(f"gaps on one device     : {_stat(gaps)}  (between consecutive stages on a GPU: start-up, waiting, queueing)")
    print(f"first stage starts     : {min(r['start'] for r in records) - start:7.1f} s after the sweep started")
    print(f"sweep end after last stage: {end - max(r['end'] for r in records):7.1f} s (report, MLflow)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-s", type=float, default=60.0)
    ap.add_argument("--finetune-s", type=float, default=20.0)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--gpus-per-node", type=int, default=4)
    ap.add_argument("--cpus-per-node", type=int, default=4, help="logical CPUs of a GPU node")
    ap.add_argument("--head-cpus", type=int, default=2, help="logical CPUs of the head (drivers take none)")
    ap.add_argument("--max-concurrent", type=int, default=8, help="resources.max_concurrent_trials")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (storage, MLflow, records)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raysuite-cluster-sim-"))
    # set before the cluster starts: its raylets, and so every Tune driver and Train worker, inherit them
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, str(HERE))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["RAYSUITE_SALT_FILE"] = str(work / "salt")
    spec_path = write_spec(work, args.pretrain_s, args.finetune_s, args.max_concurrent)

    import ray
    from cluster_sim_method import read_records

    from raysuite.spec import load_spec
    from raysuite.track import mlflow_runs as track
    from raysuite.tune.sweep import run_sweep

    spec = load_spec(spec_path)
    t0 = time.perf_counter()
    cluster = start_cluster(args.nodes, args.gpus_per_node, args.cpus_per_node, args.head_cpus)
    cluster_s = time.perf_counter() - t0
    try:
        start = time.time()
        outcome = run_sweep(spec, address=cluster.address)
        end = time.time()
        children = track.child_table(track.client(), outcome.parent_run_id)
    finally:
        ray.shutdown()
        cluster.shutdown()

    (work / "sweep_times.json").write_text(json.dumps({"start": start, "end": end}))
    statuses = children["status"].value_counts().to_dict() if len(children) else {}
    print(f"trials (MLflow)        : {len(children)} child runs {statuses}; sweep failed: {outcome.failed}; "
          f"cluster start {cluster_s:.1f} s (not counted)")  # fmt: skip
    summarise(read_records(work / "records"), start, end, args)
    if args.keep:
        print(f"files under {work} (spec: {spec_path})")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
