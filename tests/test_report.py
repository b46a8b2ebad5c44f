"""``raysuite report`` from an MLflow store with planted sweep runs: the summary's statistics
and cost, the paired comparison against the baseline arm, Optuna's plots, a self-contained
report.html, the parent's artifacts; and an ``mlflow server`` on the store serving the
parent and child runs over its REST API."""

import base64
import json
import math
import re
import shutil
import subprocess
import urllib.request

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import MlflowServer
from mlflow import MlflowClient

from raysuite.cli import main
from raysuite.report.sweep_report import report_sweep
from raysuite.spec import parse_spec
from raysuite.track import mlflow_runs as track

T0 = 1_700_000_000_000  # ms

SPEC = {
    "name": "planted",
    "method": "iou_simsiam_seg",
    "data": {"format": "flare22", "root": "/nonexistent/flare22"},
    "search": {
        "grid": {"pretrain.iou_interval": [[0.3, 0.6], None]},
        "repeats": {"finetune.seed": 3},
    },
    "objective": {"metric": "val/dice", "mode": "max", "scope": "last"},
    "resources": {
        "workers_per_trial": 2,
        "gpus_per_worker": 1,
        "cpus_per_worker": 4,
        "price_per_gpu_hour": 2.0,
    },
}
# (config label, interval, final Dice per finetune seed)
ARMS = [
    ("interval 0.3-0.6", [0.3, 0.6], [0.80, 0.84, 0.79]),
    ("no pretraining", None, [0.75, 0.77, 0.78]),
]


def plant(uri: str, spec: dict, arms=ARMS, searched: list[dict] | None = None) -> str:
    """A finished sweep: the parent with its spec.yaml, one child per (arm, seed) with
    params, tags, a 3-epoch objective history and a 30-minute wall time; ``searched[i]``:
    arm i's values as an Optuna search drew them."""
    c = MlflowClient(uri)
    parent = track.start_parent(c, spec["name"], {"spec": spec}, {"mlflow.runName": "sweep-x"})
    track.log_text(c, parent, "spec.yaml", yaml.safe_dump(spec))
    exp = c.get_run(parent).info.experiment_id
    for cid, (label, interval, values) in enumerate(arms):
        for seed, value in enumerate(values):
            repeat = {"finetune.seed": seed}
            run = c.create_run(exp, start_time=T0, run_name=f"{label} {seed}", tags={
                track.ROLE: "trial", track.PARENT: parent, "raysuite.config_id": f"c{cid}",
                "raysuite.config": label, "raysuite.repeat": json.dumps(repeat),
            }).info.run_id  # fmt: skip
            params = {
                "stages": {"pretrain": {"iou_interval": interval}, "finetune": {"seed": seed}},
                "repeat": repeat,
            }
            if searched:
                params["search"] = searched[cid]
            track.log_params(c, run, params)
            for epoch, frac in enumerate((0.5, 0.8, 1.0), start=1):
                track.log_metrics(c, run, {"val/dice": value * frac, "finetune/loss": 1 - value * frac,
                                           "finetune/epoch": epoch}, epoch, T0)  # fmt: skip
            c.set_terminated(run, "FINISHED", end_time=T0 + 30 * 60 * 1000)
    track.end_run(c, parent)
    return parent


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_report_from_planted_runs(store, tmp_path):
    parent = plant(store, SPEC)
    client = MlflowClient(store)
    report = report_sweep(client, parse_spec(SPEC), parent, tmp_path / "r")

    summary = pd.read_csv(tmp_path / "r" / "summary.csv").set_index("config")
    ours = summary.loc["interval 0.3-0.6"]
    squares = (0.80 - 0.81) ** 2 + (0.84 - 0.81) ** 2 + (0.79 - 0.81) ** 2  # 0.0014
    std, sample_std = math.sqrt(squares / 3), math.sqrt(squares / 2)  # ddof 0 printed, 1 in the CI
    assert ours.n == 3 and ours["mean"] == pytest.approx(0.81) and ours["std"] == pytest.approx(std)
    assert ours.sample_std == pytest.approx(sample_std) and not ours.ci95_clipped
    assert ours.ci95_high - ours["mean"] == pytest.approx(
        4.303 * sample_std / math.sqrt(3), rel=1e-3
    )  # t(0.975, 2)
    assert ours["finetune/loss mean"] == pytest.approx(0.19)  # every other final metric, too
    assert "finetune/epoch mean" not in summary  # bookkeeping is not summarised
    # 3 trials x 0.5 h x 2 workers x 1 GPU; CPU: x 4 per worker; priced at 2 per GPU-hour
    assert ours.gpu_hours == pytest.approx(3.0) and ours.cpu_hours == pytest.approx(12.0)
    assert ours.cost == pytest.approx(6.0) and report.cost["gpu_hours"] == pytest.approx(6.0)
    assert summary.index[0] == "interval 0.3-0.6"  # best first

    comparison = pd.read_csv(tmp_path / "r" / "comparison.csv")
    (row,) = comparison.itertuples()
    assert (row.config, row.baseline, row.n_pairs) == ("interval 0.3-0.6", "no pretraining", 3)
    diffs = np.array([0.05, 0.07, 0.01])
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(3))
    assert row.mean_diff == pytest.approx(diffs.mean()) and row.t == pytest.approx(t)
    assert row.w == 0.0 and row.p_wilcoxon == pytest.approx(0.25)  # all 3 positive: 2 of 8 patterns

    page = (tmp_path / "r" / "report.html").read_text()
    assert "interval 0.3-0.6" in page and "Against the baseline" in page
    assert not re.search(
        r"""(src|href)=["']?(https?:)?//""", page
    )  # nothing fetched from a network
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 2 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {
        "summary.csv",
        "comparison.csv",
        "trials.csv",
        "report.html",
        "config_bars.png",
        "training_curves.png",
    } <= artifacts
    assert client.get_run(parent).data.metrics["cost/cost"] == pytest.approx(12.0)


def test_cli_report_by_spec_or_experiment(store, tmp_path, capsys):
    plant(store, SPEC)
    spec_file = tmp_path / "planted.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    assert main(["report", str(spec_file), "--out", str(tmp_path / "a")]) == 0
    assert main(["report", "planted", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "report.html").exists() and (tmp_path / "b" / "summary.csv").exists()
    assert main(["report", "no-such-experiment"]) == 2
    assert "no MLflow experiment named 'no-such-experiment'" in capsys.readouterr().err


def test_spec_baseline_names_an_arm_or_stage_fields():
    with pytest.raises(Exception, match="search.baseline"):
        parse_spec({**SPEC, "search": {**SPEC["search"], "baseline": "nope"}})
    with pytest.raises(Exception, match="search.baseline.pretrain.iou_intervall"):
        parse_spec(
            {**SPEC, "search": {**SPEC["search"], "baseline": {"pretrain.iou_intervall": None}}}
        )


def test_optuna_sweep_gets_importance_and_parallel_coordinates(store, tmp_path):
    space = {
        "finetune.lr": {"loguniform": [1e-4, 1e-1]},
        "finetune.weight_decay": {"uniform": [0.0, 1e-3]},
    }
    spec = {**SPEC, "search": {"optuna": {"n_trials": 16, "space": space}}}
    rng = np.random.default_rng(0)
    drawn = [
        {"finetune.lr": 10 ** rng.uniform(-4, -1), "finetune.weight_decay": rng.uniform(0, 1e-3)}
        for _ in range(16)
    ]
    # the Dice depends on lr only (peak at 3e-3), not on weight decay
    arms = [
        (f"trial {i}", None, [0.9 - 0.1 * abs(math.log10(d["finetune.lr"]) + 2.5)])
        for i, d in enumerate(drawn)
    ]
    parent = plant(store, spec, arms, searched=drawn)
    from raysuite.tune.optuna_importance import param_importances

    report = report_sweep(MlflowClient(store), parse_spec(spec), parent, tmp_path / "r", param_importances)
    assert {"optuna_importance.png", "optuna_parallel_coordinates.png"} <= {
        p.name for p in report.files
    }

    from raysuite.tune.optuna_importance import param_importances

    points = pd.DataFrame(drawn).assign(objective=[a[2][0] for a in arms])
    importances = param_importances(points, parse_spec(spec).search.optuna.space, "max")
    assert sum(importances.values()) == pytest.approx(1.0)
    assert importances["finetune.lr"] > 1.5 * importances["finetune.weight_decay"]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_mlflow_server_serves_the_sweep_over_rest(store, tmp_path):
    parent = plant(store, SPEC)
    with MlflowServer(store, tmp_path / "artifacts", tmp_path / "server.log") as server:
        base = server.uri
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=planted"
        ) as r:
            exp = json.loads(r.read())["experiment"]["experiment_id"]
        sweeps = _post(f"{base}/api/2.0/mlflow/runs/search",
                       {"experiment_ids": [exp], "filter": "tags.`raysuite.role` = 'sweep'"})["runs"]  # fmt: skip
        assert [r["info"]["run_id"] for r in sweeps] == [parent]
        kids = _post(f"{base}/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [exp], "filter": f"tags.`mlflow.parentRunId` = '{parent}'"})["runs"]  # fmt: skip
        assert len(kids) == 6 and {r["info"]["status"] for r in kids} == {"FINISHED"}
        dice = {m["key"]: m["value"] for m in kids[0]["data"]["metrics"]}
        assert 0.7 < dice["val/dice"] < 0.9


def _browser() -> str | None:
    return next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )


@pytest.mark.slow
@pytest.mark.skipif(
    _browser() is None, reason="no headless Chromium (Debian: apt-get install chromium)"
)
def test_report_html_renders_offline_in_headless_chromium(store, tmp_path):
    """The page is opened from disk with networking off; its screenshot must show the tables
    and the plots (many non-white pixels, some of them coloured), not a blank page."""
    from PIL import Image

    parent = plant(store, SPEC)
    report_sweep(MlflowClient(store), parse_spec(SPEC), parent, tmp_path / "r")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
         (tmp_path / "r" / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    ink = (pixels < 200).any(axis=2).mean()
    colour = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()  # bars and curves, not grey text
    assert ink > 0.02 and colour > 0.002, (ink, colour)


def test_baseline_matches_bool_settings_and_arm_names():
    """Seed 004's baseline is two booleans (stored by MLflow as "true"/"false"); an arm name
    selects by the searched ``arm`` param instead."""
    from raysuite.report.tables import baseline_comparison, baseline_configs

    rows = [
        {"config_id": cid, "config": arm, "repeat": json.dumps({"fold": f}), "objective": value + 0.01 * f,
         "param.stages.classifier.enabled": json.dumps(on), "param.stages.segmenter.positives_only": json.dumps(on),
         "param.search.arm": arm}
        for cid, arm, on, value in (("c0", "one_case", True, 0.6), ("c1", "baseline", False, 0.5))
        for f in range(3)
    ]  # fmt: skip
    trials = pd.DataFrame(rows)
    assert baseline_configs(
        trials, {"classifier.enabled": False, "segmenter.positives_only": False}
    ) == ["c1"]
    assert baseline_configs(trials, "baseline") == ["c1"] and baseline_configs(trials, "nope") == []
    (row,) = baseline_comparison(trials, "baseline").itertuples()
    assert (row.config, row.baseline, row.n_pairs) == ("one_case", "baseline", 3)
    assert row.mean_diff == pytest.approx(0.1) and row.p_wilcoxon == pytest.approx(0.25)


def test_collapse_curves_count_each_pretraining_once(tmp_path, monkeypatch):
    """Two fine-tuning seeds reusing one cached pretraining relay the same history: n=1."""
    import matplotlib.axes

    from raysuite.report.plots import collapse_curves

    trials = pd.DataFrame({"run_id": ["a", "b", "c"], "config": ["x", "x", "y"],
                           "stage_key.pretrain": ["k1", "k1", "k2"]})  # fmt: skip
    history = [(1, 0.26), (2, 0.28)]
    labels, plot = [], matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda ax, *a, **kw: labels.append(kw.get("label")) or plot(ax, *a, **kw),
    )
    path = collapse_curves(trials, {"a": history, "b": history, "c": history}, tmp_path)
    assert path is not None and path.stat().st_size > 0
    assert labels == ["x (n=1)", "y (n=1)"]


def test_pruned_trials_are_listed_never_averaged():
    from raysuite.report.tables import summary_table, with_pruned

    trials = pd.DataFrame({
        "config_id": ["a", "a", "b", "b", "c", "c"], "config": ["A", "A", "B", "B", "C", "C"],
        "repeat": ['{"fold": 0}', '{"fold": 1}'] * 3,
        "status": ["FINISHED", "FINISHED", "KILLED", "KILLED", "FINISHED", "KILLED"],
        "pruned": [None, None, "6", "6", None, "2"], "objective": [0.5, 0.7, 0.9, 0.1, 0.2, 0.95],
        "start_time": [0] * 6, "end_time": [3.6e6] * 6,
    })  # fmt: skip
    finished = trials[trials.status == "FINISHED"]
    table = with_pruned(summary_table(finished, [], {}), trials).set_index("config_id")
    assert (
        table.loc["a", "n"] == 2
        and table.loc["a", "mean"] == pytest.approx(0.6)
        and table.loc["a", "pruned"] == 0
    )
    assert (
        table.loc["b", "n"] == 0
        and table.loc["b", "pruned"] == 2
        and table.loc["b", "pruned_at"] == "6"
    )
    assert math.isnan(table.loc["b", "mean"])  # a configuration pruned whole: listed, no mean
    assert table.loc["c", "n"] == 1 and table.loc["c", "mean"] == pytest.approx(
        0.2
    )  # 0.95 never averaged in


def test_report_renders_the_parents_departures_paper_and_skipped(store, tmp_path, monkeypatch):
    """The parent's departures.md (as the sweep driver logs it) becomes the report's
    "Departures from the seed" section: the citation, the ledger's rows, each configuration's
    flags; the method's paper is named at the top; skipped.txt stays listed; a bounded
    objective's interval that runs past 1 is shown clipped, with a mark and a footnote."""
    import dataclasses
    import html as _html
    import importlib

    from raysuite.methods.ledger import Departure, Paper, departures_markdown
    from raysuite.report.sweep_report import DEPARTURES, parse_departures
    from raysuite.tune.sweep import DEPARTURES as LOGGED

    assert DEPARTURES == LOGGED == "departures.md"  # the name the driver logs under
    module = importlib.import_module("raysuite.methods.iou_simsiam_seg")
    paper = Paper("IoU-Based Cropping for Contrastive Pretraining", "A. Author, B. Author",
                  "Master's thesis, Some University, 2023")  # fmt: skip
    monkeypatch.setattr(module, "METHOD", dataclasses.replace(module.METHOD, paper=paper))
    ledger = (
        Departure("finetune.epochs", "§4.5: 100 epochs", "20 epochs", "device budget"),
        Departure("val/dice | organs", "§4.4: background included", "both kept", "A | B names"),
    )
    flags = {"interval 0.3-0.6": ["not seed 001's design: `pretrain.batch_size` 64 ≠ 128"],
             "no pretraining": []}  # fmt: skip
    text = departures_markdown("iou_simsiam_seg", "001", paper, ledger, flags)
    # Dice near 1 over three seeds: the t-interval runs past 1 and is shown clipped
    arms = [("interval 0.3-0.6", [0.3, 0.6], [0.99, 0.999, 0.95]), ARMS[1]]
    parent = plant(store, SPEC, arms=arms)
    client = MlflowClient(store)
    track.log_text(client, parent, DEPARTURES, text)
    track.log_text(client, parent, "skipped.txt", "imagenet arm: weights unavailable (offline)\n")

    parts = parse_departures(text)
    assert parts["citation"] == paper.cite()
    assert parts["table"].columns.tolist() == ["item", "the seed", "raysuite", "why"]
    assert parts["table"].item.tolist() == ["finetune.epochs", "val/dice | organs"]  # \| read back
    assert parts["table"].why.tolist() == ["device budget", "A | B names"]
    assert parts["flags"] == [
        "interval 0.3-0.6: not seed 001's design: `pretrain.batch_size` 64 ≠ 128"
    ]

    report = report_sweep(client, parse_spec(SPEC), parent, tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text()
    row = report.summary.set_index("config").loc["interval 0.3-0.6"]
    assert row.ci95_high == 1.0 and bool(row.ci95_clipped)
    assert "<td>1†</td>" in page and "† interval clipped to [0, 1]" in page
    assert "ddof = 0" in page and "p_t_holm" in page and "Holm-adjusted" in page
    top, departures = page.split("<h2>Departures from the seed</h2>")
    assert f"<dd>{_html.escape(paper.cite())}</dd>" in top.split("<h2>")[0]  # named at the top
    assert "From the parent run's departures.md" in departures
    assert (
        "<td>finetune.epochs</td><td>§4.5: 100 epochs</td><td>20 epochs</td><td>device budget</td>"
        in departures
    )
    assert "<td>val/dice | organs</td>" in departures
    flag = "not seed 001's design: <code>pretrain.batch_size</code> 64 ≠ 128"
    assert f"<li>interval 0.3-0.6: {flag}</li>" in departures
    assert "<h2>Skipped configurations</h2>" in top
    assert "<li>imagenet arm: weights unavailable (offline)</li>" in top
    assert "departures.md" in {a.path for a in client.list_artifacts(parent)}


def test_report_without_departures_md_computes_them_from_the_spec(store, tmp_path):
    """A parent older than the ledger: the section is the spec's own departures, and says so;
    the paper line names the method's paper (or says it names none)."""
    import html as _html

    from raysuite.departures import departures_of
    from raysuite.methods import METHODS
    from raysuite.report.sweep_report import parse_departures

    parent = plant(store, SPEC)
    report_sweep(MlflowClient(store), parse_spec(SPEC), parent, tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text()
    section = page.split("<h2>Departures from the seed</h2>")[1]
    assert (
        "Computed from the spec and the method's ledger: the parent run carries no departures.md"
        in section
    )
    expected = parse_departures(departures_of(parse_spec(SPEC)).markdown())
    for item in expected["table"].get("item", []):
        assert f"<td>{_html.escape(item)}</td>" in section
    paper = METHODS["iou_simsiam_seg"].paper
    assert (_html.escape(paper.title) if paper else "the method names no paper") in page
    assert "<h2>Skipped configurations</h2>" not in page
