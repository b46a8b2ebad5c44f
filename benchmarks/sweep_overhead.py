"""What a raysuite sweep costs on top of the trainings it runs.

The same N small trainings (the quickstart's fine-tuning without pretraining, TINY
models, synthetic FLARE22, N fine-tuning seeds) run

(a) one after another in this process with the plain epoch loop (``fit`` + ``LocalRuntime``);
(b) as a raysuite sweep on local Ray, one trial at a time (``max_concurrent_trials: 1``, so
    both do the same work serially) with one gloo worker holding every core: Tune driver
    per trial, Ray Train controller, MLflow child runs, checkpoints, the report at the end.

Data are synthesised, ingested and cached before either is timed, and one untimed epoch
warms the caches. Prints both wall times, the per-trial overhead (b - a) / N, the ratio
b / a, and where (b)'s time goes: ``ray.init``, per trial the time from the trial's MLflow
run start to its first epoch's metrics (worker start-up, imports, data set-up) against the
same span in (a), and the end-of-sweep report.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 4] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from raysuite.methods import METHODS
from raysuite.methods.base import StageInputs
from raysuite.plan import POINT, decode, grid_trials, plan
from raysuite.spec import load_spec, smoke
from raysuite.train.loop import fit, seed_everything
from raysuite.train.runtime import LocalRuntime

QUICKSTART = Path(__file__).resolve().parent.parent / "sweeps" / "quickstart.yaml"


def make_spec(trials: int, epochs: int, storage: str):
    """The quickstart shrunk by --smoke, without pretraining, ``trials`` fine-tuning seeds of
    ``epochs`` epochs, one trial at a time (set after smoke, which caps repeats and epochs)."""
    spec = smoke(
        load_spec(QUICKSTART, ["search.grid={pretrain.iou_interval: [null]}", f"storage={storage}"])
    )
    spec.search.repeats = {"finetune.seed": trials}
    spec.stages["finetune"]["epochs"] = epochs
    spec.resources.max_concurrent_trials = 1
    # all cores to the one worker: Ray caps a worker's torch threads at its CPU reservation,
    # and (a) trains with every core
    spec.resources.cpus_per_worker = float(os.cpu_count() or 1)
    return spec


class FirstEpochRuntime(LocalRuntime):
    """LocalRuntime that remembers when the first epoch's metrics arrived."""

    first_report: float | None = None

    def report(self, metrics, checkpoint_dir):  # noqa: ANN001 - LocalRuntime's signature
        if self.first_report is None:
            self.first_report = time.perf_counter()
        super().report(metrics, checkpoint_dir)


def sequential(spec, trials: int, root: Path) -> tuple[float, list[float]]:
    """(total seconds, per-trial seconds to the first epoch's metrics)."""
    method = METHODS[spec.method]
    firsts = []
    start = time.perf_counter()
    for i, point in enumerate(grid_trials(spec)[:trials]):
        t0 = time.perf_counter()
        p = plan(spec, *decode(spec, {POINT: point}))
        for name, stage in method.stages.items():
            if stage.skips(p.configs[name]):
                continue
            seed_everything(p.seeds[name] * 1000)
            inputs = StageInputs(stage.config.model_validate(p.configs[name]), spec.data.model_dump(), None,
                                 p.seeds[name], stages=p.configs, fold=p.fold)  # fmt: skip
            runtime = FirstEpochRuntime(root / f"a{i}-{name}", device="cpu")
            fit(stage.recipe(inputs), runtime)
            if runtime.first_report is not None and len(firsts) == i:
                firsts.append(runtime.first_report - t0)
    return time.perf_counter() - start, firsts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raysuite-overhead-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    spec = make_spec(args.trials, args.epochs, str(work / "ray_results"))
    METHODS[spec.method].prepare_data(spec.data.model_dump())
    sequential(make_spec(1, 1, str(work / "warm")), 1, work / "warm")  # shard caches, imports

    a_total, a_first = sequential(spec, args.trials, work / "a")

    import ray

    from raysuite.report.sweep_report import report_sweep
    from raysuite.track import mlflow_runs as track
    from raysuite.tune.sweep import init_ray, run_sweep

    t0 = time.perf_counter()
    init_ray(None)
    ray_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    outcome = run_sweep(spec)
    b_total = time.perf_counter() - t0 + ray_init
    client = track.client()
    b_first, b_trial = [], []
    for row in track.child_table(client, outcome.parent_run_id).itertuples():
        firsts = [m.timestamp for m in client.get_metric_history(row.run_id, "finetune/loss")]
        if firsts:
            b_first.append((min(firsts) - row.start_time) / 1000)
        b_trial.append((row.end_time - row.start_time) / 1000)
    t0 = time.perf_counter()
    report_sweep(client, spec, outcome.parent_run_id, work / "report")
    report_s = time.perf_counter() - t0
    ray.shutdown()

    n = args.trials
    print(
        f"{n} trainings of {args.epochs} epochs (quickstart fine-tuning, TINY, synthetic FLARE22, CPU)"
    )
    print(f"(a) sequential, plain loop : {a_total:8.1f} s  ({a_total / n:.1f} s per training)")
    print(f"(b) raysuite sweep, 1 at a time: {b_total:8.1f} s  ({b_total / n:.1f} s per trial)")
    print(f"per-trial overhead (b - a) / N : {(b_total - a_total) / n:8.1f} s")
    print(f"ratio b / a                    : {b_total / a_total:8.2f}")
    print("where (b) spends it:")
    print(f"  ray.init                     : {ray_init:8.1f} s (once)")
    print(
        f"  run start -> first epoch     : {statistics.mean(b_first):8.1f} s per trial (a: {statistics.mean(a_first):.1f} s)"
    )
    print(
        f"  trial run, start to end      : {statistics.mean(b_trial):8.1f} s per trial (a: {a_total / n:.1f} s)"
    )
    print(f"  report (summary, plots, html): {report_s:8.1f} s (once, at the end)")
    print(f"files under {work}")


if __name__ == "__main__":
    main()
