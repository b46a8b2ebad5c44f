"""``raysuite`` command line (DESIGN.md): sweep, train, validate, plan, methods, new, data, report, cache.

Exit codes: 0 success, 2 bad input or usage (the message names file and key), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from raysuite.data.ingest import LayoutError
from raysuite.data.manifest import ManifestError
from raysuite.data.privacy import SaltError
from raysuite.spec import SOURCE_FORMATS, Spec, SpecError, load_spec, smoke
from raysuite.spec_checks import check_data_present, check_weight_files
from raysuite.spec_errors import did_you_mean


def _load(args: argparse.Namespace) -> Spec:
    """The spec a sweep or train runs (shrunk by ``--smoke``), refused before Ray starts when
    a data root it cannot synthesise is missing."""
    spec = load_spec(args.spec, args.set)
    spec = smoke(spec) if args.smoke else spec
    check_data_present(spec, args.spec)
    check_weight_files(spec, args.spec)
    return spec


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = _load(args)
    from raysuite.tune.sweep import run_sweep

    outcome = run_sweep(spec, resume=args.resume, address=args.address)
    print(f"parent run {outcome.parent_run_id}; trainings per stage: {outcome.stage_runs}")
    if not outcome.summary.empty:
        print(outcome.summary[["config", "n", "mean ± std"]].to_string(index=False))
    if outcome.failed:
        print("error: some trials failed after their retries (see their MLflow runs)", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    spec = _load(args)
    from raysuite.tune.sweep import run_single

    print(f"run {run_single(spec, address=args.address)}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """What a sweep will run: trials and their stages, skipped configurations, weights,
    totals, a device-hour estimate and the departures from the seed (nothing is trained)."""
    spec = load_spec(args.spec, args.set)
    spec = smoke(spec) if args.smoke else spec
    check_weight_files(spec, args.spec)
    from raysuite.tune.sweep_plan import render, sweep_plan

    out = sweep_plan(spec, fetch=args.fetch)
    print(json.dumps(out, indent=1, default=str) if args.json else render(out))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """Without NAME: every method (built in, then the installed entry points) with its seed
    or description, stages, data format, headline metric and metric keys. With NAME (a
    method's name or an import path ``pkg.module:ATTR``): its card, each stage's fields
    with type, default and meaning, its metric keys, baseline, post-hoc knobs, departures."""
    from raysuite import method_card
    from raysuite.methods import METHODS

    if args.name is not None:
        try:
            method = METHODS[args.name]
        except KeyError as err:
            known = f"; known: {', '.join(METHODS)}{did_you_mean(args.name, METHODS)}" if str(err).startswith("unknown") else ""
            print(f"error: {err}{known}", file=sys.stderr)
            return 2
        print(method_card.card(args.name, method))
        return 0
    broken = 0
    for name in METHODS:
        try:
            print(method_card.summary(name, METHODS[name]) + "\n")
        except KeyError as err:
            print(f"{name}: cannot be listed: {err}\n")
            broken += 1
    if broken:
        print(f"error: {broken} registered method(s) cannot be loaded (above)", file=sys.stderr)
        return 1
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    """``raysuite new method NAME [DIR]``: a method package of your own, ready to sweep."""
    from raysuite.scaffold import ScaffoldError, new_method

    try:
        written = new_method(args.name, Path(args.dir))
    except ScaffoldError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(f"next, from {args.dir}: PYTHONPATH=. pytest -q; PYTHONPATH=. raysuite methods {args.name}; "
          f"PYTHONPATH=. raysuite sweep sweeps/{args.name}.yaml --smoke")  # fmt: skip
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check each path (default: the shipped sweeps, cluster.yaml and dashboards) as a sweep
    spec (with the ``--set`` items; with ``--data`` its data roots too), a cluster config or
    a dashboard; the first problem is a SpecError (exit 2)."""
    paths = args.paths or sorted(glob.glob("sweeps/*.yaml")) + ["cluster.yaml"] + sorted(glob.glob("dashboards/*.json"))
    for path in paths:
        name = Path(path).name
        if name == "cluster.yaml" or name.startswith("cluster"):
            from raysuite.tune.cluster import validate_cluster

            try:
                validate_cluster(path)
            except ValueError as err:
                raise SpecError(path, "", str(err).removeprefix(f"{path}: ")) from None
        elif path.endswith(".json"):
            from raysuite.report.dashboards import validate_dashboard

            problems = validate_dashboard(path)
            if problems:
                first, *rest = problems
                raise SpecError(path, first.key, first.message + "".join(f"\n  {p}" for p in rest))
        else:
            spec = load_spec(path, args.set)
            if args.data:
                check_data_present(spec, path)
                check_weight_files(spec, path)
        print(f"ok  {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """SWEEP is a spec file (its ``name`` is the MLflow experiment) or an experiment name;
    the newest sweep run of that experiment is reported unless ``--run`` names one. The
    spec the sweep logged (as it ran, e.g. shrunk by --smoke) drives the report."""
    import yaml

    from raysuite.report.sweep_report import report_sweep
    from raysuite.spec import parse_spec
    from raysuite.track import mlflow_runs as track
    from raysuite.tune.optuna_importance import param_importances

    given = load_spec(args.sweep) if Path(args.sweep).is_file() else None
    experiment = given.name if given is not None else args.sweep
    client = track.client()
    try:
        parent = args.run or track.latest_sweep(client, experiment)
    except LookupError as err:
        raise SpecError(args.sweep, "", str(err)) from None
    logged = track.read_text(client, parent, "spec.yaml")
    spec = parse_spec(yaml.safe_load(logged), f"run {parent}: spec.yaml") if logged else given
    if spec is None:
        raise SpecError(args.sweep, "", f"run {parent} has no spec.yaml artifact: pass the spec file")
    out = Path(args.out or Path("reports") / experiment)
    report = report_sweep(client, spec, parent, out, param_importances)
    if not report.summary.empty:
        print(report.summary[["config", "n", "mean ± std"]].to_string(index=False))
    print(f"report of run {parent} ({experiment}): {out / 'report.html'}; also on the run's artifacts")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``raysuite cache ls [--storage S]``, ``raysuite cache rm KEY ... | --stale``: the stage
    cache under S (default: $RAYSUITE_STORAGE, else ./ray_results)."""
    from raysuite.storage import root_of
    from raysuite.tune import stage_cache

    storage = root_of(args.storage)
    found = stage_cache.entries(storage)
    if args.action == "ls":
        print(f"{'key':<24}  {'method':<18} {'stage':<11} {'size':>9}  {'created':<20}  state    sweep")
        for e in found:
            state = "stale" if e["stale"] else "ok" if e["complete"] else "partial"
            print(f"{e['key']:<24}  {e['method'] or '?':<18} {e['stage'] or '?':<11} {e['size'] / 2**20:>7.1f}MB"
                  f"  {e['created'] or '?':<20}  {state:<8} {e['sweep'] or '?'}")  # fmt: skip
        print(f"{len(found)} entries under {storage}/stage_cache")
        return 0
    if args.stale == bool(args.keys):
        raise SpecError(None, "cache rm", "name the KEYs to remove, or --stale")
    keys = [e["key"] for e in found if e["stale"]] if args.stale else args.keys
    for key in keys:
        try:
            stage_cache.remove(storage, key)
        except KeyError:
            raise SpecError(None, key, f"no stage-cache entry {key!r} under {storage}/stage_cache") from None
        print(f"removed {key}")
    print(f"{len(keys)} entries removed")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """``data synth`` writes a synthetic layout, ``data ingest`` a manifest and its error
    table (progress on stderr), ``data errors`` prints a manifest's error table as CSV."""
    from raysuite.data import synth
    from raysuite.data.datasets import SplitOptions, errors_path, run_ingest

    if args.action == "synth":
        if args.cases < 1:
            raise SpecError(None, "--cases", f"must be a positive number of cases; got {args.cases}")
        counts = synth.get(args.format).synth(args.out, cases=args.cases, seed=args.seed)
        print(f"wrote {counts} to {args.out}")
        return 0
    if args.action == "errors":
        import pandas as pd

        table = errors_path(args.manifest)
        if not table.is_file():
            raise SpecError(table, "", "no error table (run `raysuite data ingest` to write one)")
        pd.read_parquet(table).to_csv(sys.stdout, index=False)
        return 0
    try:
        ratios = tuple(float(r) for r in args.split.split(","))
    except ValueError:
        raise SpecError(None, "--split", f"expected three numbers train,val,test; got {args.split!r}") from None
    try:  # checked before any file is decoded
        split = SplitOptions(ratios=ratios, seed=args.split_seed, folds=args.folds)  # type: ignore[arg-type]
    except ManifestError as err:
        key = "--folds" if args.folds is not None and args.folds < 2 else "--split"
        raise SpecError(None, key, str(err)) from None
    counts = run_ingest(args.format, args.root, args.out, workers=args.workers, split=split)
    print(f"found {counts['found']}  ingested {counts['ingested']}  failed {counts['failed']}")
    for reason, n in counts["failed_by_reason"].items():
        print(f"  failed {reason}: {n}")
    print(f"manifest {args.out} (hash {counts['hash']}); errors {errors_path(args.out)}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="raysuite", description=(__doc__ or "raysuite").splitlines()[0])  # None under -OO
    sub = ap.add_subparsers(dest="command", required=True)
    sw = sub.add_parser("sweep", help="run a sweep spec with Ray Tune")
    sw.add_argument("spec")
    sw.add_argument("--address", default=None, help="Ray cluster address (default: start or join local Ray)")
    sw.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    sw.add_argument("--smoke", action="store_true", help="shrink the spec to run in minutes on a CPU")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a spec value, parsed as YAML: <stage>.<field> (short for stages.<stage>.<field>), search.grid.<stage>.<field>=[...], any dotted key")
    sw.set_defaults(func=cmd_sweep)
    tr = sub.add_parser("train", help="one trial of a spec with Ray Train (no Tune)")
    tr.add_argument("spec")
    tr.add_argument("--address", default=None)
    tr.add_argument("--smoke", action="store_true")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for sweep")
    tr.set_defaults(func=cmd_train)
    pl = sub.add_parser("plan", help="what a sweep will run, before it runs (nothing is trained)")
    pl.add_argument("spec")
    pl.add_argument("--json", action="store_true", help="the plan as JSON (trials, skipped, departures, ...)")
    pl.add_argument("--smoke", action="store_true", help="plan the spec as --smoke would shrink it")
    pl.add_argument("--fetch", action="store_true", help="download missing pretrained weights into the libraries' caches")
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for sweep")
    pl.set_defaults(func=cmd_plan)
    me = sub.add_parser("methods", help="the methods (built in and installed); one method's card with NAME")
    me.add_argument("name", nargs="?", default=None, metavar="NAME",
                    help="a method name or import path pkg.module:ATTR: its stages, fields, metric keys, baseline")
    me.set_defaults(func=cmd_methods)
    nw = sub.add_parser("new", help="scaffold a method package of your own")
    nsub = nw.add_subparsers(dest="what", required=True)
    nm = nsub.add_parser("method", help="DIR/NAME/ (a Method), DIR/sweeps/NAME.yaml, DIR/tests/test_NAME.py")
    nm.add_argument("name", metavar="NAME", help="the package and method name (a Python identifier)")
    nm.add_argument("dir", nargs="?", default=".", metavar="DIR", help="where to write it (default: here)")
    nm.set_defaults(func=cmd_new)
    va = sub.add_parser("validate", help="check sweeps/*.yaml, cluster.yaml, dashboards/*.json")
    va.add_argument("paths", nargs="*")
    va.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for sweep, on each sweep spec")
    va.add_argument("--data", action="store_true",
                    help="also check each data root exists unless the spec synthesises it (sweep and train always do)")
    va.set_defaults(func=cmd_validate)
    rp = sub.add_parser("report", help="summary, paired tests, cost and plots of a sweep, as report.html")
    rp.add_argument("sweep", help="a sweep spec file or an MLflow experiment name")
    rp.add_argument("--out", default=None, help="output folder (default: reports/<experiment>)")
    rp.add_argument("--run", default=None, help="the sweep's parent run id (default: the newest)")
    rp.set_defaults(func=cmd_report)
    ca = sub.add_parser("cache", help="list or clear the stage cache")
    csub = ca.add_subparsers(dest="action", required=True)
    for name in ("ls", "rm"):
        c = csub.add_parser(name)
        c.add_argument("--storage", default=None, help="storage root (default: $RAYSUITE_STORAGE or ./ray_results)")
        if name == "rm":
            c.add_argument("keys", nargs="*", metavar="KEY")
            c.add_argument("--stale", action="store_true", help="every entry computed by code other than today's")
    ca.set_defaults(func=cmd_cache)
    da = sub.add_parser("data", help="synthesise or ingest a dataset")
    dsub = da.add_subparsers(dest="action", required=True)
    sy = dsub.add_parser("synth")
    sy.add_argument("format", choices=SOURCE_FORMATS)
    sy.add_argument("out")
    sy.add_argument("--cases", type=int, default=10)
    sy.add_argument("--seed", type=int, default=0)
    ing = dsub.add_parser("ingest")
    ing.add_argument("format", choices=SOURCE_FORMATS)
    ing.add_argument("root")
    ing.add_argument("out", help="manifest .parquet (errors go to <out>.errors.parquet)")
    ing.add_argument("--workers", type=int, default=None, help="decode processes (default: cores, at most 8)")
    ing.add_argument("--split", default="0.7,0.1,0.2", help="patient-level train,val,test ratios")
    ing.add_argument("--split-seed", type=int, default=0)
    ing.add_argument("--folds", type=int, default=None, help="also assign K cross-validation folds by patient")
    er = dsub.add_parser("errors", help="print a manifest's error table as CSV")
    er.add_argument("manifest", help="the manifest .parquet (its table is <manifest>.errors.parquet)")
    da.set_defaults(func=cmd_data)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as err:
        return int(err.code or 0)
    try:
        return args.func(args)
    except (SpecError, LayoutError, ManifestError, SaltError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - a runtime failure: say what and exit 1
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
