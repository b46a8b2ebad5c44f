"""The shipped Grafana dashboards, and ``raysuite validate``'s checks of dashboards."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raysuite.cli import main
from raysuite.report.dashboards import (
    metric_names,
    query_metric_names,
    ray_metric_names,
    validate_dashboard,
)

DASHBOARDS = sorted((Path(__file__).parents[1] / "dashboards").glob("*.json"))
TRAINING = DASHBOARDS[0].parent / "raysuite.json"


def _edited(tmp_path: Path, edit) -> Path:
    board = json.loads(TRAINING.read_text())
    edit(board)
    path = tmp_path / "board.json"
    path.write_text(json.dumps(board))
    return path


def _panel(board: dict, title: str) -> dict:
    return next(p for p in board["panels"] if p.get("title") == title)


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_shipped_dashboards_validate_clean(path):
    assert validate_dashboard(path) == []


def test_both_dashboards_ship():
    assert [p.name for p in DASHBOARDS] == ["raysuite.json", "raysuite_sweep.json"]


def test_unknown_metric_names_the_panel_and_the_metric(tmp_path):
    def typo(board):
        _panel(board, "Samples/s per trial")["targets"][0]["expr"] = (
            'max by (trial) (ray_raysuite_samples_per_sec_typo{experiment=~"$experiment"})'
        )

    problems = validate_dashboard(_edited(tmp_path, typo))
    assert len(problems) == 1
    assert problems[0].key.endswith(".targets[0].expr")
    assert "'Samples/s per trial'" in problems[0].message
    assert "ray_raysuite_samples_per_sec_typo" in problems[0].message


@pytest.mark.parametrize(
    ("expr", "bad"),
    [
        (
            "sum(ray_raysuite_stage_cache_hits)",
            "ray_raysuite_stage_cache_hits",
        ),  # a counter is only ..._total
        ("avg(ray_node_cpu_utilisation)", "ray_node_cpu_utilisation"),  # not a Ray metric
        ("avg(node_cpu_seconds_total)", "node_cpu_seconds_total"),  # neither raysuite's nor Ray's
    ],
)
def test_names_are_checked_exactly(tmp_path, expr, bad):
    def edit(board):
        _panel(board, "Epoch time")["targets"][0]["expr"] = expr

    assert [p.message.rsplit(" ", 1)[-1] for p in validate_dashboard(_edited(tmp_path, edit))] == [
        bad
    ]


def test_hard_coded_datasource_is_rejected(tmp_path):
    def fixed(board):
        panel = _panel(board, "Epoch time")
        panel["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
        panel["targets"][0]["datasource"] = "Prometheus"

    problems = validate_dashboard(_edited(tmp_path, fixed))
    assert [p.key.rsplit(".", 1)[-1] for p in problems] == ["datasource", "datasource"]
    assert all("'Epoch time'" in p.message and "${datasource}" in p.message for p in problems)


def test_datasource_variable_is_required(tmp_path):
    def drop(board):
        board["templating"]["list"] = [
            v for v in board["templating"]["list"] if v["name"] != "datasource"
        ]

    problems = validate_dashboard(_edited(tmp_path, drop))
    assert [p.key for p in problems] == ["templating.list"]


def test_variable_queries_are_checked(tmp_path):
    def typo(board):
        var = next(v for v in board["templating"]["list"] if v["name"] == "trial")
        var["query"]["query"] = "label_values(ray_raysuite_sample_per_s, trial)"

    problems = validate_dashboard(_edited(tmp_path, typo))
    assert [str(p).endswith("unknown metric ray_raysuite_sample_per_s") for p in problems] == [True]


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", str(TRAINING)]) == 0

    def typo(board):
        _panel(board, "Data-wait fraction")["targets"][0]["expr"] = (
            "ray_raysuite_samples_per_sec_typo"
        )

    bad = _edited(tmp_path, typo)
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert (
        str(bad) in err
        and "'Data-wait fraction'" in err
        and "ray_raysuite_samples_per_sec_typo" in err
    )
    broken = tmp_path / "broken.json"
    broken.write_text('{"panels": [')
    assert main(["validate", str(broken)]) == 2
    assert "invalid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("rate(ray_tasks_total[5m])", {"ray_tasks_total"}),
        ('sum by (trial) (rate(foo_total{stage=~"pre.*|fine"}[$__rate_interval]))', {"foo_total"}),
        (
            'max by (trial, stage) (a{experiment=~"$experiment", trial!~"x{2}(y)?"}) / on(trial) group_left(stage) b',
            {"a", "b"},
        ),
        ("histogram_quantile(0.9, sum(rate(x_bucket[5m])) by (le))", {"x_bucket"}),
        ('label_replace(up, "dst", "$1", "src", "(sum|rate)")', {"up"}),
        ("sum without (instance) (c) and d or e unless f offset 1h > bool 2", {"c", "d", "e", "f"}),
        ("avg(g) / on() (sum(h) or vector(0)) * 100 + inf", {"g", "h"}),
        ("max_over_time(i[1h:5m]) * 1e9 - ${trial} + $__interval", {"i"}),
        ("SUM BY (x) (j)", {"j"}),
        ('count_values("value", k) > topk(3, l)', {"k", "l"}),
        ('count({__name__=~"ray_raysuite_.*"})', set()),
    ],
)
def test_promql_metric_names(expr, expected):
    assert metric_names(expr) == expected


def test_variable_query_names():
    assert query_metric_names('label_values(m{a="x,y"}, trial)') == {"m"}
    assert query_metric_names("label_values(trial)") == set()
    assert query_metric_names("query_result(sum by (s) (n))") == {"n"}
    assert query_metric_names("label_names()") == set()


def test_ray_names_come_from_rays_panels():
    names = ray_metric_names()
    assert {"ray_node_cpu_utilization", "ray_node_gram_used", "ray_resources", "ray_tasks"} <= names
    assert "ray_train_run_name" not in names  # a label in Ray Train's panels, not a metric
    assert all(n.startswith("ray_") for n in names)


def test_validate_imports_neither_ray_nor_torch():
    code = (
        "import sys; from raysuite.cli import main; "
        f"assert main(['validate', {str(TRAINING)!r}]) == 0; "
        "assert not {'ray', 'torch'} & set(sys.modules), sorted({'ray', 'torch'} & set(sys.modules))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
